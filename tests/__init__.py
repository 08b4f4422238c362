"""Tests of the detector project (unit, service, ansible, e2e) and the test bed."""
