"""cnnlab predict: classify photos, scans or drawings of digits with a run (or an exported ONNX file)."""

from __future__ import annotations

import sys

import cnnlab

from . import COMMANDS, add_force_flag, add_json_flag, add_preprocess_flag, add_tta_flag, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help=COMMANDS["predict"],
                       description="Classify image files with a trained run folder or an exported .onnx file. "
                                   "Each image is prepared the way the run's training images were made: "
                                   "handwriting (MNIST, QMNIST, KMNIST) the MNIST way (paper's light removed, "
                                   "noise suppressed, cropped to the digit, scaled to fit 20x20, centred by "
                                   "centre of mass in 28x28), Fashion-MNIST the Fashion-MNIST way, folder "
                                   "datasets only resized; --preprocess chooses another. Folders are walked. "
                                   "Exit status 1 if any file could not be classified.")
    p.add_argument("model", metavar="RUN_DIR", help="a folder written by 'cnnlab train', or a .onnx file "
                                                  "written by 'cnnlab export'")
    p.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+", help="image files and/or folders of images")
    p.add_argument("--top-k", type=positive_int, default=3, metavar="K",
                   help="how many classes to print per image, most likely first (default 3)")
    p.add_argument("--save-preprocessed", metavar="DIR", default=None,
                   help="write the 28x28 image the model saw for each input to DIR as PNG")
    add_force_flag(p, "PNG files already in the --save-preprocessed folder")
    add_preprocess_flag(p)
    add_tta_flag(p, "; run folders only")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    clf = cnnlab.load_classifier(args.model, tta=args.tta, preprocess=args.preprocess)
    results = cnnlab.predict_files(clf, args.inputs, top_k=min(args.top_k, len(clf.classes)),
                                   save_preprocessed=args.save_preprocessed, force=args.force)
    failed = sum("error" in r for r in results)
    if args.json:
        print_json([{k: r[k] for k in ("file", "error")} if "error" in r else
                    {k: r[k] for k in ("file", "prediction", "label", "probabilities", "top_k", "preprocessing",
                                        "preprocessed") if k in r}
                    for r in results])
    else:
        for r in results:
            if "error" in r:
                print(f"cnnlab predict: error: {r['error']}", file=sys.stderr)
                continue
            top = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top_k"])
            print(f"{r['file']}: {r['label']}  ({top})")
        ok = len(results) - failed
        how = "chosen by --preprocess" if args.preprocess else f"as {clf.dataset} was made"
        print(f"{ok} of {len(results)} image{'s' if len(results) != 1 else ''} classified"
              + (f", {failed} failed" if failed else "") + f" ({clf.preprocessing} preprocessing, {how})",
              file=sys.stderr)
    return 1 if failed else 0
