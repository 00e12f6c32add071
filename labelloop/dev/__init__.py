"""The demo, the local process stack, generated images and videos: for the demo, tests and benchmarks."""
