"""Training: the train stage (`train.train_model`, also the torchrun entry `python -m pipeline.training.train`),
the model-agnostic epoch loop (`trainer`), task-loss weighting and losses."""
