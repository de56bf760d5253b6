"""Training and export: real datasets, torch RNN/GRU/LSTM models, BPTT training, ONNX export.

Imported as ``rnnstream.export`` (this folder, mapped under the one ``rnnstream`` name).
``rnnstream train`` (``cli``) drives it end to end: ``data`` loads and splits a series by
time, ``model`` defines the network, ``train`` fits it with (truncated) backpropagation
through time, ``onnx`` writes the one-step graph and its manifest after checking it against
torch, and ``plots`` draws what happened. ``gradients`` measures how far back the trained
network's gradient reaches (the memory horizon); ``artifact_model`` rebuilds the torch
network from a written graph, so ``diagnose_cli`` (``rnnstream diagnose``) can measure a
model already on disk.

This package needs the ``[train]`` extra (torch, onnx, ...); the server never imports it.
"""
