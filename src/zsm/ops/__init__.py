"""Custom tensor operators: they depend on torch, torchvision and the standard library only.

* :mod:`zsm.ops.dcn`: the modulated deformable convolution (DCNv2).
"""
