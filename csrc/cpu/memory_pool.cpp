// The CPU memory pool: a c10::Allocator put in front of torch's CPU allocator the first time a
// thread enters the pool (memory_pool_enter), that keeps the pages of the large blocks it hands out
// and carves later tensors, of any size, out of them.
//
// Why: glibc's malloc either returns a freed large block to the system (blocks above its mmap
// threshold, and whatever malloc_trim finds free), after which the next tensor of that size faults
// in fresh zeroed pages, one minor fault per 4 KiB; or keeps it in the heap, where blocks of varying
// sizes fragment and the resident set of a training step grows with the number of layers. The
// reversible layers allocate the same shapes layer after layer, and a step the same sequence of
// shapes as the step before, so carving each tensor out of pages that earlier tensors freed is exact
// reuse: no faults after the first steps, and the pool's size follows the largest set of bytes alive
// at once, not the depth, nor the number of distinct shapes.
//
// Policy:
// - Only blocks of kLargeBlock bytes or more; smaller ones go to the allocator that was there before.
// - A block's size is the request rounded up to whole pages.
// - The pool's free memory is a set of address ranges (what freed blocks leave, merged with their
//   free neighbours, across mappings: anonymous mappings can be split and unmapped page by page).
// - Allocating, on any thread: the start of the smallest free range that holds the request (best
//   fit; the rest of the range stays free). Failing that, on a thread inside the pool
//   (memory_pool_enter), a free range grown into the block by mapping the missing pages right below
//   or above it (so a range too small for the tensors that come next is not stranded beside a fresh
//   mapping of the whole size: that is what made the pool larger than its peak in use), else a fresh
//   anonymous mapping of the block's size; outside it the pool does not grow and the request goes
//   to the previous allocator. (So the parts of a training step around
//   the pooled ones, the backward of the last layer and of the loss, take the pool's idle pages
//   instead of growing malloc's heap beside them.)
// - Freeing (whenever and wherever the tensor dies): back to the free ranges.
// - Each outermost memory_pool_enter on any thread starts a new pass; it unmaps the free ranges
//   last freed before the pass before last, which no pass of the last two used. A training step's
//   forward and backward reuse the previous step's pages, so those stay; what shapes no longer use
//   goes.
// - memory_pool_empty unmaps every free range; blocks in use are kept and freed into the pool.
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
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace reformer_kernels {
namespace {

// glibc's initial mmap threshold: from there up, malloc maps each block on its own (until its
// dynamic threshold rises), so each such tensor can cost a fault per page; below it the heap serves.
constexpr size_t kLargeBlock = size_t{128} << 10;

thread_local int pool_depth = 0;  // memory_pool_enter calls not yet exited, on this thread

size_t whole_pages(size_t n) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

struct FreeRange {
  size_t size;
  uint64_t freed_in_pass;  // the latest pass in which a block merged into it was freed
};

class PoolAllocator final : public c10::Allocator {
 public:
  explicit PoolAllocator(c10::Allocator* previous) : previous_(previous) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kLargeBlock) {
      return previous_->allocate(n);
    }
    const size_t size = whole_pages(n);
    void* ptr = take_free(size);
    if (ptr == nullptr) {
      if (pool_depth == 0) {
        return previous_->allocate(n);
      }
      ptr = extend_free(size);
      if (ptr == nullptr) {
        ptr = map_fresh(size);
      }
    }
    return {ptr, ptr, &free_block, c10::Device(c10::DeviceType::CPU)};
  }

  // At an outermost memory_pool_enter: a new pass; unmap what the last two passes did not use.
  void start_pass() {
    std::vector<std::pair<uintptr_t, size_t>> unmap;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++pass_;
      for (auto range = free_.begin(); range != free_.end();) {
        if (range->second.freed_in_pass + 2 < pass_) {
          unmap.emplace_back(range->first, range->second.size);
          free_bytes_ -= range->second.size;
          range = free_.erase(range);
        } else {
          ++range;
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
    std::vector<std::pair<uintptr_t, size_t>> unmap;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& range : free_) {
        unmap.emplace_back(range.first, range.second.size);
      }
      free_.clear();
      free_bytes_ = 0;
      peak_in_use_bytes_ = in_use_bytes_;
    }
    return unmap_all(unmap);
  }

  PyObject* stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n}", "in_use_bytes", to_py(in_use_bytes_), "cached_bytes",
                         to_py(free_bytes_), "peak_in_use_bytes", to_py(peak_in_use_bytes_), "cached_blocks",
                         to_py(free_.size()), "reused", to_py(reused_), "mapped", to_py(mapped_), "unmapped",
                         to_py(unmapped_));
  }

 private:
  static Py_ssize_t to_py(size_t n) { return static_cast<Py_ssize_t>(n); }

  static void free_block(void* ptr);

  // The start of the smallest free range of ``size`` bytes or more (the lowest of equals), or null.
  void* take_free(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto range = free_.begin(); range != free_.end(); ++range) {
      if (range->second.size >= size && (best == free_.end() || range->second.size < best->second.size)) {
        best = range;
      }
    }
    if (best == free_.end()) {
      return nullptr;
    }
    const uintptr_t start = best->first;
    const FreeRange rest{best->second.size - size, best->second.freed_in_pass};
    free_.erase(best);
    if (rest.size > 0) {
      free_.emplace(start + size, rest);
    }
    free_bytes_ -= size;
    ++reused_;
    start_using(reinterpret_cast<void*>(start), size);
    return reinterpret_cast<void*>(start);
  }

  // A block of ``size`` bytes made of a free range (smaller, since take_free found none that fits)
  // and a fresh mapping of the missing bytes right below or above it, where that address space is
  // unused (MAP_FIXED_NOREPLACE never replaces a mapping); or null. The free ranges are tried
  // largest first, so the fewest fresh pages are mapped.
  void* extend_free(size_t size) {
    constexpr size_t kTries = 8;
    std::vector<std::pair<size_t, uintptr_t>> ranges;  // (size, start), largest first
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& range : free_) {
        ranges.emplace_back(range.second.size, range.first);
      }
    }
    std::sort(ranges.begin(), ranges.end(), std::greater<>());
    ranges.resize(std::min(ranges.size(), kTries));
    for (const auto& [have, start] : ranges) {
      const size_t missing = size - have;
      for (const bool below : {true, false}) {
        if (below && start < missing) {
          continue;
        }
        const uintptr_t at = below ? start - missing : start + have;
        void* got = mmap(reinterpret_cast<void*>(at), missing, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (got == MAP_FAILED) {
          continue;
        }
        if (reinterpret_cast<uintptr_t>(got) != at) {  // a kernel that takes the address as a hint only
          munmap(got, missing);
          continue;
        }
        std::lock_guard<std::mutex> lock(mutex_);
        auto range = free_.find(start);
        if (range == free_.end() || range->second.size != have) {  // another thread took part of it meanwhile
          munmap(got, missing);
          return nullptr;
        }
        free_.erase(range);
        free_bytes_ -= have;
        ++mapped_;
        void* block = reinterpret_cast<void*>(below ? at : start);
        start_using(block, size);
        return block;
      }
    }
    return nullptr;
  }

  void* map_fresh(size_t size) {
    void* ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {
      empty();  // the pool's free ranges may be what stands in the way
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
    uintptr_t start = reinterpret_cast<uintptr_t>(ptr);
    size_t size = found->second;
    in_use_.erase(found);
    in_use_bytes_ -= size;
    report(ptr, -static_cast<int64_t>(size));
    free_bytes_ += size;
    // Merge with the free neighbours on both sides.
    auto after = free_.lower_bound(start);
    if (after != free_.end() && after->first == start + size) {
      size += after->second.size;
      after = free_.erase(after);
    }
    if (after != free_.begin()) {
      auto before = std::prev(after);
      if (before->first + before->second.size == start) {
        start = before->first;
        size += before->second.size;
        free_.erase(before);
      }
    }
    free_.emplace(start, FreeRange{size, pass_});
    return true;
  }

  size_t unmap_all(const std::vector<std::pair<uintptr_t, size_t>>& ranges) {
    size_t bytes = 0;
    for (const auto& range : ranges) {
      munmap(reinterpret_cast<void*>(range.first), range.second);
      bytes += range.second;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    unmapped_ += ranges.size();
    return bytes;
  }

  void report(void* ptr, int64_t delta) {  // under mutex_: torch.profiler's memory view
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(ptr, delta, in_use_bytes_, in_use_bytes_ + free_bytes_,
                                       c10::Device(c10::DeviceType::CPU));
    }
  }

  c10::Allocator* const previous_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> in_use_;
  std::map<uintptr_t, FreeRange> free_;  // by start address, neighbours merged
  size_t in_use_bytes_ = 0, free_bytes_ = 0, peak_in_use_bytes_ = 0;
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
