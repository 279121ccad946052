"""The test suite as a package, so that ``tests.support`` imports the same way from every test folder."""
