// CUDA-on-CPU test emulator: stands in for the CUDA runtime API header (see tests/cuda_emu/README.md).
#pragma once
#include "txn_emu/runtime.h"
