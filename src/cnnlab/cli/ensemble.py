"""cnnlab ensemble: join finished runs into one ensemble folder and report its accuracy."""

from __future__ import annotations

import cnnlab

from . import COMMANDS, add_data_dir_flag, add_json_flag, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("ensemble", help=COMMANDS["ensemble"],
                       description="Copy finished run folders (trained anywhere, e.g. on several machines) into "
                                   "a new ensemble folder OUT/member-1, member-2, ... and print the test accuracy "
                                   "of each member, of the ensemble and of the ensemble with test-time "
                                   "augmentation. The runs must share dataset, classes and normalisation. The "
                                   "folder works with evaluate, predict, serve and export like any run.")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="two or more folders written by 'cnnlab train'")
    p.add_argument("--out", required=True, metavar="DIR", help="ensemble folder to create (must not exist yet)")
    add_data_dir_flag(p)
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="evaluate on the first N test images only")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    out = cnnlab.assemble(args.run_dirs, args.out)
    r = cnnlab.evaluate_ensemble(out, data_dir=args.data_dir, limit=args.limit, record=True)
    if args.json:
        print_json(r)
        return 0
    print_summary(r)
    return 0


def print_summary(r: dict) -> None:
    """The lines `cnnlab ensemble` and `cnnlab train --ensemble` print (r: ensemble.evaluate_ensemble's dict)."""
    for m in r["members"]:
        print(f"member {m['run_dir']}" + (f" ({m['model']}, seed {m['seed']})" if "seed" in m else "")
              + (f" (from {m['source']})" if "source" in m else "")
              + f": test accuracy {m['test_accuracy']:.2%}")
    best = max(m["test_accuracy"] for m in r["members"])
    print(f"ensemble of {len(r['members'])}: test accuracy {r['test_accuracy']:.2%} (best member {best:.2%}), "
          f"with TTA {r['tta_test_accuracy']:.2%}, on {r['test_images']:,} {r['dataset']} test images; "
          f"saved to {r['run_dir']}")
