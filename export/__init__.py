"""Training and export: real datasets, torch RNN/GRU/LSTM models, BPTT training, ONNX export.

``rnnstream train`` (``export.cli``) drives it end to end: ``export.data`` loads and splits a
series by time, ``export.model`` defines the network, ``export.train`` fits it with
(truncated) backpropagation through time, ``export.onnx`` writes the one-step graph and its
manifest after checking it against torch, and ``export.plots`` draws what happened.

This package needs the ``[train]`` extra (torch, onnx, ...); the server never imports it.
"""
