"""Lightning callbacks (only callbacks: what they use lives in the ask_the_expert package).

- ``collaborative_eval.CollaborativeInferenceCallback``: the routed-inference evaluation at validation / test end
  (its report is written by ask_the_expert.results).
- ``export_bundle.ExportBundleCallback``: export a deployment bundle at the end of a fit.
- ``wandb_logging``: the W&B run id in every checkpoint (a resumed fit continues its run), and the resolved config
  saved with the run.
- ``progress``: plain progress lines when the output is a log file.
"""
