"""cnnlab serve: a web explorer (drawing canvas, feature maps, kernel playground, training from the
page, run browser) and JSON API."""

from __future__ import annotations

import cnnlab

from . import COMMANDS, add_data_dir_flag, add_preprocess_flag, port


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help=COMMANDS["serve"],
                       description="Serve a web page and JSON API for a run folder, a folder of run folders (the "
                                   "run browser lists them; the newest finished one is loaded), or an exported "
                                   ".onnx file (prediction only). Binds 127.0.0.1 unless --host says otherwise; "
                                   "use --host 0.0.0.0 to let other machines in. Training from the page is on "
                                   "at 127.0.0.1 and off elsewhere unless --allow-training.")
    p.add_argument("model", metavar="RUN_DIR|RUNS_DIR",
                   help="a folder written by 'cnnlab train', a folder of such folders, or a .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--allow-training", action="store_true",
                   help="let visitors train (on this machine's CPU) and change the explorer's model when --host "
                        "is not 127.0.0.1 (on 127.0.0.1 they always may)")
    p.add_argument("--runs-dir", default=None,
                   help="the folder the run browser lists and page trainings go into (default: RUNS_DIR, or the "
                        "folder holding RUN_DIR)")
    add_data_dir_flag(p, "dataset folder for page trainings and the run browser's test images")
    add_preprocess_flag(p, "uploaded images and drawings")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning; info logs every request)")
    p.set_defaults(func=run)


def run(args) -> int:
    cnnlab.serve(args.model, host=args.host, port=args.port, log_level=args.log_level,
                 allow_training=args.allow_training, runs_dir=args.runs_dir, data_dir=args.data_dir,
                 preprocess=args.preprocess)
    return 0
