"""cnnlab serve: a web explorer (drawing canvas, feature maps, kernel playground) and JSON API."""

from __future__ import annotations

from ..web.serve import serve
from . import COMMANDS, add_preprocess_flag, port


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help=COMMANDS["serve"],
                       description="Serve a web page and JSON API for a run folder (or an exported .onnx "
                                   "file: prediction only). Binds 127.0.0.1 unless --host says otherwise; "
                                   "use --host 0.0.0.0 to let other machines in.")
    p.add_argument("model", metavar="RUN_DIR", help="a folder written by 'cnnlab train' (or a .onnx file)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    add_preprocess_flag(p, "uploaded images and drawings")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning; info logs every request)")
    p.set_defaults(func=run)


def run(args) -> int:
    serve(args.model, host=args.host, port=args.port, log_level=args.log_level, preprocess=args.preprocess)
    return 0
