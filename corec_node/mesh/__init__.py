"""Sans-I/O state machines of the mesh: membership (SWIM + Lifeguard), election, flow
control, composed by ``core.py`` (the one glue the node shell and the simulator drive)."""
