"""FlightLLM FPGA model: architecture descriptions, instruction compiler, cycle-level and
functional simulators, HLS C++ emission. See docs/fpga.md."""
