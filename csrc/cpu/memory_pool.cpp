// The CPU memory pool: a c10::Allocator put in front of torch's CPU allocator the first time a
// thread enters the pool (memory_pool_enter), that keeps the large blocks it hands out and reuses
// them for later tensors of the same size class.
//
// Why: glibc's malloc either returns a freed large block to the system (blocks above its mmap
// threshold, and whatever malloc_trim finds free), after which the next tensor of that size faults
// in fresh zeroed pages, one minor fault per 4 KiB; or keeps it in the heap, where blocks of varying
// sizes fragment and the resident set of a training step grows with the number of layers. The
// reversible layers allocate the same shapes layer after layer, so keeping each freed block for
// the next tensor of its size is exact reuse: no faults after the first step, and the pool's size
// follows the largest set of blocks alive at once, not the depth.
//
// Policy:
// - Only blocks of kLargeBlock bytes or more; smaller ones go to the allocator that was there before.
// - A block's size is the request rounded up to its size class (an eighth of the power of two at or
//   below it, at least a page), so lengths that differ a little share blocks. Pages past the request
//   are never written, so they take no memory.
// - Allocating, on any thread: the most recently freed cached block of the size class. Failing that,
//   on a thread inside the pool (memory_pool_enter), a fresh anonymous mapping. Outside it the pool
//   does not grow: it unmaps its least recently freed blocks of other classes, at least the request's
//   size, and maps the request in their place; with too few cached bytes for that, the request goes
//   to the previous allocator. (So the parts of a training step around the pooled ones, the last
//   layer and the loss, take the pool's idle blocks instead of growing malloc's heap beside it, and
//   from the next step on find their own blocks cached.)
// - Freeing (whenever and wherever the tensor dies): back to the cache.
// - Each outermost memory_pool_enter on any thread starts a new pass; it unmaps the cached blocks
//   freed before the pass before last, which no pass of the last two reused. A training step's
//   forward and backward reuse the previous step's blocks, so those stay; shapes no longer used go.
// - memory_pool_empty unmaps every cached block; blocks in use are kept and cached when freed.
// Contents are never cleared or relied on: a reused block holds whatever its last tensor left,
// as a block from malloc does, so no result depends on the pool.
#include "memory_pool.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace reformer_kernels {
namespace {

constexpr size_t kLargeBlock = size_t{1} << 20;

thread_local int pool_depth = 0;  // memory_pool_enter calls not yet exited, on this thread

size_t size_class(size_t n) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t power = size_t{1} << (63 - __builtin_clzll(n));
  const size_t step = std::max(power / 8, page);
  return (n + step - 1) / step * step;
}

struct Block {
  void* ptr;
  size_t size;
  uint64_t freed_in_pass;
};

class PoolAllocator final : public c10::Allocator {
 public:
  explicit PoolAllocator(c10::Allocator* previous) : previous_(previous) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kLargeBlock) {
      return previous_->allocate(n);
    }
    const size_t size = size_class(n);
    void* ptr = take_cached(size);
    if (ptr == nullptr) {
      if (pool_depth == 0 && !unmap_idle(size)) {
        return previous_->allocate(n);
      }
      ptr = map_fresh(size);
    }
    return {ptr, ptr, &free_block, c10::Device(c10::DeviceType::CPU)};
  }

  // At an outermost memory_pool_enter: a new pass; unmap what the last two passes did not reuse.
  void start_pass() {
    std::vector<Block> unmap;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++pass_;
      for (auto block = cached_.begin(); block != cached_.end();) {
        if (block->freed_in_pass + 2 < pass_) {
          unmap.push_back(*block);
          cached_bytes_ -= block->size;
          block = cached_.erase(block);
        } else {
          ++block;
        }
      }
    }
    unmap_all(unmap);
  }

  c10::DeleterFnPtr raw_deleter() const override { return &free_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t empty() {
    std::vector<Block> unmap;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      unmap.assign(cached_.begin(), cached_.end());
      cached_.clear();
      cached_bytes_ = 0;
      peak_in_use_bytes_ = in_use_bytes_;
    }
    return unmap_all(unmap);
  }

  PyObject* stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n}", "in_use_bytes", to_py(in_use_bytes_), "cached_bytes",
                         to_py(cached_bytes_), "peak_in_use_bytes", to_py(peak_in_use_bytes_), "cached_blocks",
                         to_py(cached_.size()), "reused", to_py(reused_), "mapped", to_py(mapped_), "unmapped",
                         to_py(unmapped_));
  }

 private:
  static Py_ssize_t to_py(size_t n) { return static_cast<Py_ssize_t>(n); }

  static void free_block(void* ptr);

  void* take_cached(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = std::find_if(cached_.begin(), cached_.end(), [size](const Block& b) { return b.size == size; });
    if (found == cached_.end()) {
      return nullptr;
    }
    void* ptr = found->ptr;
    cached_bytes_ -= size;
    cached_.erase(found);
    ++reused_;
    start_using(ptr, size);
    return ptr;
  }

  // Outside the pool: unmap least recently freed blocks, ``size`` bytes or more, for a fresh block to
  // take their place; false (nothing unmapped) where fewer bytes are cached.
  bool unmap_idle(size_t size) {
    std::vector<Block> unmap;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_bytes_ < size) {
        return false;
      }
      size_t unmapped = 0;
      while (unmapped < size) {
        unmap.push_back(cached_.back());
        unmapped += cached_.back().size;
        cached_bytes_ -= cached_.back().size;
        cached_.pop_back();
      }
    }
    unmap_all(unmap);
    return true;
  }

  void* map_fresh(size_t size) {
    void* ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {
      empty();  // the cached blocks of other size classes may be what stands in the way
      ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    TORCH_CHECK_WITH(OutOfMemoryError, ptr != MAP_FAILED, "reformer_kernels CPU memory pool: could not map ", size,
                     " bytes; free some tensors or use less memory");
    std::lock_guard<std::mutex> lock(mutex_);
    ++mapped_;
    start_using(ptr, size);
    return ptr;
  }

  void start_using(void* ptr, size_t size) {  // under mutex_
    in_use_.emplace(ptr, size);
    in_use_bytes_ += size;
    peak_in_use_bytes_ = std::max(peak_in_use_bytes_, in_use_bytes_);
    report(ptr, static_cast<int64_t>(size));
  }

  // Returns false where ``ptr`` is not one of the pool's blocks in use.
  bool give_back(void* ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = in_use_.find(ptr);
    if (found == in_use_.end()) {
      return false;
    }
    const size_t size = found->second;
    in_use_.erase(found);
    in_use_bytes_ -= size;
    report(ptr, -static_cast<int64_t>(size));
    cached_.push_front({ptr, size, pass_});
    cached_bytes_ += size;
    return true;
  }

  size_t unmap_all(const std::vector<Block>& blocks) {
    size_t bytes = 0;
    for (const Block& block : blocks) {
      munmap(block.ptr, block.size);
      bytes += block.size;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    unmapped_ += blocks.size();
    return bytes;
  }

  void report(void* ptr, int64_t delta) {  // under mutex_: torch.profiler's memory view
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(ptr, delta, in_use_bytes_, in_use_bytes_ + cached_bytes_,
                                       c10::Device(c10::DeviceType::CPU));
    }
  }

  c10::Allocator* const previous_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> in_use_;
  std::list<Block> cached_;  // most recently freed first
  size_t in_use_bytes_ = 0, cached_bytes_ = 0, peak_in_use_bytes_ = 0;
  size_t reused_ = 0, mapped_ = 0, unmapped_ = 0;
  uint64_t pass_ = 0;
};

// Installed once and never destroyed: tensors of the pool and storages that remember their
// allocator may outlive any scope, down to interpreter exit.
PoolAllocator* pool = nullptr;

void PoolAllocator::free_block(void* ptr) {
  // raw_allocate's blocks come back here too, the previous allocator's small ones included.
  if (!pool->give_back(ptr)) {
    pool->previous_->raw_deleter()(ptr);
  }
}

PoolAllocator* installed_pool() {
  static std::once_flag once;
  std::call_once(once, [] {
    c10::Allocator* previous = c10::GetCPUAllocator();
    pool = new PoolAllocator(previous);
    c10::SetCPUAllocator(pool, /*priority=*/1);
  });
  return pool;
}

PyObject* memory_pool_enter(PyObject*, PyObject*) {
  PoolAllocator* installed = installed_pool();
  if (c10::GetCPUAllocator() != installed) {
    PyErr_SetString(PyExc_RuntimeError,
                    "reformer_kernels CPU memory pool: another CPU allocator was registered with a higher priority "
                    "(c10::SetCPUAllocator), so the pool cannot serve torch's CPU tensors; unregister it or do "
                    "without the pool");
    return nullptr;
  }
  if (pool_depth++ == 0) {
    installed->start_pass();
  }
  Py_RETURN_NONE;
}

PyObject* memory_pool_exit(PyObject*, PyObject*) {
  if (pool_depth == 0) {
    PyErr_SetString(PyExc_RuntimeError,
                    "reformer_kernels CPU memory pool: memory_pool_exit without a matching memory_pool_enter on "
                    "this thread; use the reformer_kernels.cpu_memory_pool() context manager");
    return nullptr;
  }
  --pool_depth;
  Py_RETURN_NONE;
}

PyObject* memory_pool_empty(PyObject*, PyObject*) {
  size_t released = 0;
  if (pool != nullptr) {
    Py_BEGIN_ALLOW_THREADS
    released = pool->empty();
    Py_END_ALLOW_THREADS
  }
  return PyLong_FromSize_t(released);
}

PyObject* memory_pool_stats(PyObject*, PyObject*) {
  if (pool == nullptr) {  // not installed yet: every counter is zero
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "in_use_bytes", 0, "cached_bytes", 0, "peak_in_use_bytes", 0,
                         "cached_blocks", 0, "reused", 0, "mapped", 0, "unmapped", 0);
  }
  return pool->stats();
}

PyMethodDef memory_pool_methods[] = {
    {"memory_pool_enter", memory_pool_enter, METH_NOARGS,
     "Let this thread map fresh pool blocks for large CPU tensors until the matching memory_pool_exit."},
    {"memory_pool_exit", memory_pool_exit, METH_NOARGS, "Leave the innermost memory_pool_enter of this thread."},
    {"memory_pool_empty", memory_pool_empty, METH_NOARGS,
     "Unmap the pool's cached (free) blocks; returns the bytes handed back to the system."},
    {"memory_pool_stats", memory_pool_stats, METH_NOARGS, "The pool's byte and block counters, as a dict."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

int add_memory_pool_functions(PyObject* module) { return PyModule_AddFunctions(module, memory_pool_methods); }

}  // namespace reformer_kernels
