"""Training: the recipe, the child process that runs Ultralytics, run directories, the display
threshold and the scoring it uses.
"""
