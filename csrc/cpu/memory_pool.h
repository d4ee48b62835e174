// A caching pool for large CPU blocks, so that a training step reuses the pages of the previous
// sub-layer's temporaries instead of returning them to the system and faulting fresh zeroed ones
// back in (see memory_pool.cpp for the policy). Python reaches it through the module functions that
// add_memory_pool_functions puts on reformer_kernels._C.
#pragma once

#include <Python.h>

namespace reformer_kernels {

// Adds memory_pool_enter, memory_pool_exit, memory_pool_empty and memory_pool_stats to ``module``;
// returns 0, or -1 with a Python error set.
int add_memory_pool_functions(PyObject* module);

}  // namespace reformer_kernels
