"""The model zoo: the architectures scg exists for, written with its public primitives."""
