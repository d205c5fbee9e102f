"""An evaluation's outputs: the files of one evaluation folder, its plots and the pipeline's markdown report."""
