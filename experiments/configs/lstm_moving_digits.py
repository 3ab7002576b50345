"""The issue's name for `cnn_lstm_moving_digits` (the same config; see that file for the recipe and figures).

    python -m experiments.run --exp=lstm_moving_digits
    python -m experiments.run --exp=lstm_moving_digits --config.model.name=cnn_avg   # the frame-average baseline

Expected: eval/accuracy >= 0.9 with the LSTM head (measured 0.947), the baseline <= 0.55 (measured 0.481).
"""
from experiments.configs.cnn_lstm_moving_digits import get_config  # noqa: F401
