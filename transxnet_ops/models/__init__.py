from .official import OfficialTransXNet, official_transxnet_b, official_transxnet_s, official_transxnet_t
from .transxnet import ARCHS, TransXNet, transxnet_b, transxnet_s, transxnet_t

__all__ = ["ARCHS", "TransXNet", "transxnet_t", "transxnet_s", "transxnet_b",
           "OfficialTransXNet", "official_transxnet_t", "official_transxnet_s", "official_transxnet_b"]
