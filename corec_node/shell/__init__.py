"""The I/O shell: the only place with sockets, an event loop and a clock.

Everything that decides lives in the pure cores (``wire/``, ``mesh/``, ``engine/``); the
shell feeds them ``(event, now)`` and carries out the effects they return. ``node.py`` is
the composition root; each other module is one piece of I/O: ``transport.py`` (ZeroMQ),
``control.py`` (the CLI's unix socket), ``curve.py`` (CurveZMQ keys and ZAP),
``discovery.py`` (LAN beacons), ``metrics.py`` (Prometheus), ``systemd.py`` (the notify
protocol), ``datadir.py`` (the vote file and the data-dir lock), ``ingestqueue.py``.
"""
