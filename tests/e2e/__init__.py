"""End-to-end tests on the test bed (booted hosts, ACME, DNS)."""
