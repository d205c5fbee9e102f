"""An evaluation's outputs: the results store (evaluation_outputs: the folder's format, writer, reader and the W&B
metric names), the plots (drawing only) and the pipeline's markdown report."""
