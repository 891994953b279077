"""cnnlab: convolutional neural networks on MNIST-style images, to run, see inside, trust and use.

The Python API is these names; each loads its module (and PyTorch) on first use, so importing
cnnlab, or running `cnnlab --help`, is quick:

    train, TrainConfig, config (a recipe's TrainConfig), build_model, model_names,
    summarize, leave_dynamo_unloaded                                                (engine/)
    load, evaluate, train_ensemble, assemble, evaluate_ensemble, predict_files,
    load_classifier, export, compare                                                (runs/)
    visualize, write_figures, check_figures_out, run_files, report, gallery,
    invariance, code                                                                (see/)
    create_app, serve                                                               (web/)

The layout: lecture/ holds the lecture's lessons, engine/ trains, runs/ does everything with a
run folder, see/ draws, web/ serves the explorer, cli/ is the command line over this API.
"""

from importlib import import_module

__version__ = "0.1.0"

# name -> (module, attribute): the one table of the public API.
_API = {
    "train": ("cnnlab.engine.train", "train"),
    "TrainConfig": ("cnnlab.engine.config", "TrainConfig"),
    "config": ("cnnlab.engine.config", "config"),
    "build_model": ("cnnlab.engine.models", "build_model"),
    "model_names": ("cnnlab.engine.models", "model_names"),
    "summarize": ("cnnlab.engine.summary", "summarize"),
    "leave_dynamo_unloaded": ("cnnlab.engine.optimizers", "leave_dynamo_unloaded"),
    "load": ("cnnlab.runs.folder", "load"),
    "evaluate": ("cnnlab.runs.evaluate", "evaluate"),
    "train_ensemble": ("cnnlab.runs.ensemble", "train_ensemble"),
    "assemble": ("cnnlab.runs.ensemble", "assemble"),
    "evaluate_ensemble": ("cnnlab.runs.ensemble", "evaluate_ensemble"),
    "predict_files": ("cnnlab.runs.predict", "predict_files"),
    "load_classifier": ("cnnlab.runs.predict", "load_classifier"),
    "export": ("cnnlab.runs.export", "export"),
    "compare": ("cnnlab.runs.compare", "compare"),
    "visualize": ("cnnlab.see.visualize", "render"),
    "write_figures": ("cnnlab.see.visualize", "write"),
    "check_figures_out": ("cnnlab.see.visualize", "check_out"),
    "run_files": ("cnnlab.runs.folder", "run_files"),
    "report": ("cnnlab.see.report", "build"),
    "gallery": ("cnnlab.see.gallery", "draw"),
    "invariance": ("cnnlab.see.invariance", "measure"),
    "code": ("cnnlab.see.code", "sections"),
    "create_app": ("cnnlab.web.serve", "create_app"),
    "serve": ("cnnlab.web.serve", "serve"),
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    # PEP 562: load a public name's module the first time it is asked for.
    if name not in _API:
        raise AttributeError(f"module 'cnnlab' has no attribute '{name}'")
    module, attribute = _API[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
