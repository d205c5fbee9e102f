"""Lightning callbacks and the W&B logger set-up.

- ``collaborative_eval.CollaborativeInferenceCallback`` (written by ``reporting``): the routed-inference evaluation.
- ``export_bundle.ExportBundleCallback``: export a deployment bundle at the end of a fit.
- ``wandb_logging``: the W&B logger that never fails a run, and the resolved config saved with it.
- ``progress``: plain progress lines when the output is a log file.
"""
