"""The function behind every command (called with an argv list, returning an exit code) and the console entry
points of ``[project.scripts]``; pipeline_steps holds the pipeline's steps."""
