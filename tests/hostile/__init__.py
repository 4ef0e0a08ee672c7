"""The hostile-server suite: the fault matrix, with asyncio debug mode and warnings as errors."""
