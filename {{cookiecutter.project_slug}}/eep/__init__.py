"""Provisioning and deployment steps of this app, one module per subsystem.

`tasks.py` holds only the command-line tasks; everything they do lives here.
"""
