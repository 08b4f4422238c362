"""Release lifecycle behind fabfile.py: build, upload, blue/green switch, gate, rollback, certs."""
