from .transxnet import ARCHS, TransXNet, transxnet_b, transxnet_s, transxnet_t

__all__ = ["ARCHS", "TransXNet", "transxnet_t", "transxnet_s", "transxnet_b"]
