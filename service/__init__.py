"""The rnnstream server: settings, model repository, engines, sessions, servicer, server.

Imported as ``rnnstream.server`` (this folder, mapped under the one ``rnnstream`` name).

Everything but ``servicer`` and ``server`` is plain Python that tests drive without a
network. Never imports torch.
"""
