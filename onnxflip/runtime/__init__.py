"""Talking to ONNX Runtime and the FlipBits kernel.

``library`` finds and loads the compiled library and reads the operator's
contract it exports; ``contract`` is Python's view of that contract;
``session`` is the one session builder; ``flip`` runs the kernel on NumPy
arrays through ONNX Runtime, ``host`` on host memory and ``cuda`` on device
memory through the library's C entry points.  This package's ``__init__`` imports
none of them; importing ``onnxflip`` itself loads the library, since its
top level reads the contract (element types, ``DOMAIN``).
"""
