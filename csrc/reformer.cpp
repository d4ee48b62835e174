// Every op schema of the reformer_kernels library, in one place. Backend files (cpu/*.cpp,
// cuda/*.cu) add implementations with TORCH_LIBRARY_IMPL; Python adds fake impls and autograd.
#include <Python.h>
#include <torch/library.h>

#include <string>

// The module object only exists so that `import reformer_kernels._C` loads the library and runs
// the registrations below; it also says whether CUDA was compiled in.
static PyObject* with_cuda(PyObject*, PyObject*) {
#ifdef REFORMER_KERNELS_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"with_cuda", with_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr},
};

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "reformer_kernels compiled kernels", -1, methods};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(reformer_kernels, m) {
  // Stable counting sort of LSH bucket ids (round offsets already added) along the last dim.
  // buckets: (..., N) int64 in [0, num_buckets). Returns sorted_idx (positions ordered by
  // (bucket, position)) and undo_sort, its inverse permutation; both int64, same shape.
  m.def("bucket_sort(Tensor buckets, int num_buckets) -> (Tensor sorted_idx, Tensor undo_sort)");
}
