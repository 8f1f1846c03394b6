"""The Slack edge, the local shell and the ``kfbot`` command: settings from the environment, the
composition root (``bot.app``), Bolt listeners, Block Kit, notifiers and the HTTP server."""
