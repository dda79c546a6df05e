// Element types shared by the CUDA bindings (.cpp, with torch) and kernels (.cu, without torch headers).
#pragma once

namespace transxnet_ops {

enum class DType { Float32, Float16, BFloat16 };

}  // namespace transxnet_ops
