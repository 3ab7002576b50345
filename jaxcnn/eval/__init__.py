"""Evaluation of generative models.

  fid        Fréchet distance (FID) and Inception Score in JAX, on any features
  extractor  the classifier whose features and predictions the scores use
  grids      PNG grids of samples, reconstructions and interpolations
"""
