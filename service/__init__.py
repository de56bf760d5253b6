"""The rnnstream server: settings, model repository, engines, sessions, servicer, server.

Everything but ``servicer`` and ``server`` is plain Python that tests drive without a
network. Never imports torch.
"""
