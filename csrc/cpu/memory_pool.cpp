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
// - Planning (what best fit cannot do): a training step's tensors of many sizes and lifetimes leave
//   best fit's free ranges cut into pieces that the next large tensor does not fit, so the pool
//   grew to about 1.4x the bytes ever in use at once. But a step allocates the same sizes in the
//   same order as the step before. So the pool records, per pass (a "segment": from one outermost
//   enter to the next, with what runs outside passes in between), each large request's size and
//   when it was allocated and freed. When the last segments repeat the ones before them (period 1,
//   inference, or 2, a training step's forward and backward passes), it places that period's
//   blocks once, offline, in one address range (greedily, the largest or the longest-lived first,
//   each at the lowest offset or in the smallest gap where no block alive at the same time in the
//   period lies, whichever of the four needs the fewest bytes; a block alive across the period's
//   end wraps), maps that range and from then on serves the k-th request of each period at its planned
//   address if that request has the planned size and the whole range there is free. A request
//   that fails either test, or that the plan left out (a block that lives longer than a period), is
//   served by best fit outside the planned range; a segment that does not repeat its counterpart
//   drops the plan, and a new one is made when the segments repeat again. Planned addresses are
//   only ever taken from free ranges, so a wrong plan costs memory, never correctness.
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
#include <deque>
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

constexpr uint64_t kAlive = UINT64_MAX;  // Allocation::freed_at of a block not freed (yet)
constexpr uint64_t kUnplanned = UINT64_MAX;  // a plan's offset for a block it leaves to best fit
// Requests a segment records at most (past that it is not planned: memory and planning time stay
// bounded when large tensors are allocated outside passes for a long time).
constexpr size_t kMaxRecorded = size_t{1} << 16;
// Blocks a plan places at most: placing is quadratic in them, about a second at this bound, once.
// A training step of the 6-layer crime-and-punishment configuration requests 467 at 16K tokens and
// 3253 at 524,288 (its chunked loops grow with the length).
constexpr size_t kMaxPlanned = size_t{1} << 14;
constexpr size_t kKeptSegments = 5;
constexpr size_t kKeptRejected = 4;  // periods not adopted that are not planned again (each phase of a period of two)  // two periods of two segments, and the one being recorded

struct Allocation {  // one large request, by the pool's clock (one tick per large allocation or free)
  size_t size;
  uint64_t allocated_at, freed_at;
};

struct Segment {
  uint64_t serial, start;  // start: the clock at its pass's start
  uint64_t signature = 14695981039346656037ull;  // FNV-1a over the sizes requested, in order
  bool overflowed = false;  // more than kMaxRecorded requests: never planned
  size_t held = 0;  // the most bytes the pool held (in use and free) at an allocation in it
  std::vector<Allocation> allocations;
};

struct Request {  // where a large request sits in the recording, and the address the plan gives it
  uint64_t segment;
  size_t index;
  uintptr_t planned;  // 0: none
};

struct Block {  // a block in use (or a foreign one being watched), and its request
  size_t size;
  uint64_t segment;
  size_t index;
};

class PoolAllocator final : public c10::Allocator {
 public:
  explicit PoolAllocator(c10::Allocator* previous) : previous_(previous) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kLargeBlock) {
      return previous_->allocate(n);
    }
    const size_t size = whole_pages(n);
    const Request request = note_request(size);
    void* ptr = request.planned == 0 ? nullptr : take_at(request.planned, size, request);
    if (ptr == nullptr) {
      ptr = take_free(size, request);
    }
    if (ptr == nullptr) {
      if (pool_depth == 0) {
        // The previous allocator's block, watched so that its lifetime is recorded, then handed back to it.
        void* foreign = previous_->raw_allocate(n);
        std::lock_guard<std::mutex> lock(mutex_);
        foreign_.emplace(foreign, Block{size, request.segment, request.index});
        return {foreign, foreign, &free_block, c10::Device(c10::DeviceType::CPU)};
      }
      ptr = extend_free(size, request);
      if (ptr == nullptr) {
        ptr = map_fresh(size, request);
      }
    }
    return {ptr, ptr, &free_block, c10::Device(c10::DeviceType::CPU)};
  }

  // At an outermost memory_pool_enter: a new pass and segment; unmap what the last two passes did
  // not use; check the plan against the segment just ended, or make one.
  void start_pass() {
    std::vector<std::pair<uintptr_t, size_t>> unmap;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++pass_;
      const bool adopt = close_segment();
      for (auto range = free_.begin(); range != free_.end();) {
        if (adopt || range->second.freed_in_pass + 2 < pass_) {
          unmap.emplace_back(range->first, range->second.size);
          free_bytes_ -= range->second.size;
          range = free_.erase(range);
        } else {
          ++range;
        }
      }
    }
    unmap_all(unmap);
    std::lock_guard<std::mutex> lock(mutex_);
    if (!plan_.empty() && arena_ == 0 && phase_ == 0) {
      map_arena();
    }
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
      arena_ = 0;  // its free pages go with the rest; a plan maps a new one at its period's next start
    }
    return unmap_all(unmap);
  }

  PyObject* stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}", "in_use_bytes", to_py(in_use_bytes_),
                         "cached_bytes", to_py(free_bytes_), "peak_in_use_bytes", to_py(peak_in_use_bytes_),
                         "cached_blocks", to_py(free_.size()), "reused", to_py(reused_), "mapped", to_py(mapped_),
                         "unmapped", to_py(unmapped_), "plan_bytes", to_py(plan_.empty() ? 0 : plan_bytes_),
                         "planned", to_py(planned_), "plans", to_py(plans_));
  }

 private:
  static Py_ssize_t to_py(size_t n) { return static_cast<Py_ssize_t>(n); }

  static void free_block(void* ptr);

  bool in_arena(uintptr_t start) const { return arena_ != 0 && start >= arena_ && start < arena_ + plan_bytes_; }

  // Records a large request in the current segment and returns the plan's address for it, if any.
  Request note_request(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++clock_;
    Segment& segment = segments_.back();
    Request request{segment.serial, kMaxRecorded, 0};
    if (segment.allocations.size() < kMaxRecorded) {
      request.index = segment.allocations.size();
      segment.allocations.push_back(Allocation{size, clock_, kAlive});
      segment.signature = (segment.signature ^ size) * 1099511628211ull;
    } else {
      segment.overflowed = true;
    }
    if (!plan_.empty() && arena_ != 0 && ordinal_ < plan_.size() && plan_[ordinal_].size == size &&
        plan_[ordinal_].offset != kUnplanned) {
      request.planned = arena_ + plan_[ordinal_].offset;
    }
    ++ordinal_;
    return request;
  }

  // The block at ``at`` if [at, at + size) lies in one free range, else null.
  void* take_at(uintptr_t at, size_t size, const Request& request) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto range = free_.upper_bound(at);
    if (range == free_.begin()) {
      return nullptr;
    }
    --range;
    const uintptr_t start = range->first;
    const FreeRange whole = range->second;
    if (start + whole.size < at + size) {
      return nullptr;
    }
    free_.erase(range);
    if (at > start) {
      free_.emplace(start, FreeRange{at - start, whole.freed_in_pass});
    }
    if (start + whole.size > at + size) {
      free_.emplace(at + size, FreeRange{start + whole.size - (at + size), whole.freed_in_pass});
    }
    free_bytes_ -= size;
    ++reused_;
    ++planned_;
    start_using(reinterpret_cast<void*>(at), size, request);
    return reinterpret_cast<void*>(at);
  }

  // The start of the smallest free range of ``size`` bytes or more (the lowest of equals), or null.
  // While a plan holds, its address range is left to the planned requests.
  void* take_free(size_t size, const Request& request) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto range = free_.begin(); range != free_.end(); ++range) {
      if (range->second.size >= size && !in_arena(range->first) &&
          (best == free_.end() || range->second.size < best->second.size)) {
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
    start_using(reinterpret_cast<void*>(start), size, request);
    return reinterpret_cast<void*>(start);
  }

  // A block of ``size`` bytes made of a free range (smaller, since take_free found none that fits)
  // and a fresh mapping of the missing bytes right below or above it, where that address space is
  // unused (MAP_FIXED_NOREPLACE never replaces a mapping); or null. The free ranges are tried
  // largest first, so the fewest fresh pages are mapped; a plan's range is not grown.
  void* extend_free(size_t size, const Request& request) {
    constexpr size_t kTries = 8;
    std::vector<std::pair<size_t, uintptr_t>> ranges;  // (size, start), largest first
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& range : free_) {
        if (!in_arena(range.first)) {
          ranges.emplace_back(range.second.size, range.first);
        }
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
        if (range == free_.end() || range->second.size != have || in_arena(start)) {  // changed meanwhile
          munmap(got, missing);
          return nullptr;
        }
        free_.erase(range);
        free_bytes_ -= have;
        ++mapped_;
        void* block = reinterpret_cast<void*>(below ? at : start);
        start_using(block, size, request);
        return block;
      }
    }
    return nullptr;
  }

  void* map_anonymous(size_t size) {
    void* ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {
      empty();  // the pool's free ranges may be what stands in the way
      ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    TORCH_CHECK_WITH(OutOfMemoryError, ptr != MAP_FAILED, "reformer_kernels CPU memory pool: could not map ", size,
                     " bytes; free some tensors or use less memory");
    return ptr;
  }

  void* map_fresh(size_t size, const Request& request) {
    void* ptr = map_anonymous(size);
    std::lock_guard<std::mutex> lock(mutex_);
    ++mapped_;
    start_using(ptr, size, request);
    return ptr;
  }

  void start_using(void* ptr, size_t size, const Request& request) {  // under mutex_
    in_use_.emplace(ptr, Block{size, request.segment, request.index});
    in_use_bytes_ += size;
    peak_in_use_bytes_ = std::max(peak_in_use_bytes_, in_use_bytes_);
    segments_.back().held = std::max(segments_.back().held, in_use_bytes_ + free_bytes_);
    report(ptr, static_cast<int64_t>(size));
  }

  // Records the end of the lifetime of ``block``'s request.
  void note_free(const Block& block) {  // under mutex_
    ++clock_;
    const uint64_t oldest = segments_.front().serial;
    if (block.segment >= oldest && block.index < kMaxRecorded) {
      segments_[block.segment - oldest].allocations[block.index].freed_at = clock_;
    }
  }

  // Returns false where ``ptr`` is not one of the pool's blocks in use.
  bool give_back(void* ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = in_use_.find(ptr);
    if (found == in_use_.end()) {
      auto foreign = foreign_.find(ptr);
      if (foreign != foreign_.end()) {
        note_free(foreign->second);
        foreign_.erase(foreign);
      }
      return false;
    }
    note_free(found->second);
    uintptr_t start = reinterpret_cast<uintptr_t>(ptr);
    size_t size = found->second.size;
    in_use_.erase(found);
    in_use_bytes_ -= size;
    report(ptr, -static_cast<int64_t>(size));
    free_bytes_ += size;
    // Merge with the free neighbours on both sides (not across the edge of a plan's range).
    auto after = free_.lower_bound(start);
    if (after != free_.end() && after->first == start + size && in_arena(after->first) == in_arena(start)) {
      size += after->second.size;
      after = free_.erase(after);
    }
    if (after != free_.begin()) {
      auto before = std::prev(after);
      if (before->first + before->second.size == start && in_arena(before->first) == in_arena(start)) {
        start = before->first;
        size += before->second.size;
        free_.erase(before);
      }
    }
    free_.emplace(start, FreeRange{size, pass_});
    return true;
  }

  // Ends the segment being recorded and starts the next. With a plan: drops it unless the ended
  // segment repeated its counterpart in the plan's period. Without: makes one when the last
  // segments repeat; returns true when a plan was made that needs no more bytes than best fit held
  // (the caller then unmaps the free ranges, which the plan's range replaces).
  bool close_segment() {  // under mutex_
    const Segment& ended = segments_.back();
    bool adopt = false;
    if (!plan_.empty()) {
      if (ended.overflowed || ended.signature != plan_signatures_[phase_]) {
        drop_plan();
      } else {
        phase_ = (phase_ + 1) % plan_signatures_.size();
        if (phase_ == 0) {
          ordinal_ = 0;
        }
      }
    }
    segments_.push_back(Segment{ended.serial + 1, clock_});
    if (segments_.size() > kKeptSegments) {
      segments_.pop_front();
    }
    if (plan_.empty()) {
      adopt = make_plan();
    }
    return adopt;
  }

  void drop_plan() {  // under mutex_: the plan's range becomes ordinary free memory
    plan_.clear();
    plan_signatures_.clear();
    arena_ = 0;
    phase_ = 0;
    ordinal_ = 0;
  }

  // The period (1 or 2 segments) that the ended segments repeat, planned; true if adopted.
  bool make_plan() {  // under mutex_; segments_.back() is the segment just started
    const size_t ended = segments_.size() - 1;
    for (size_t period = 1; period <= 2; ++period) {
      if (ended < 2 * period) {
        return false;
      }
      const size_t first = ended - 2 * period;  // the older of the two repetitions
      bool repeats = true;
      for (size_t j = first; j < first + 2 * period; ++j) {
        repeats = repeats && !segments_[j].overflowed;
      }
      for (size_t j = first; j < first + period && repeats; ++j) {
        const Segment &older = segments_[j], &newer = segments_[j + period];
        repeats = older.signature == newer.signature && older.allocations.size() == newer.allocations.size() &&
                  segments_[j + 1].start - older.start == segments_[j + period + 1].start - newer.start;
      }
      if (repeats) {
        std::vector<uint64_t> signatures;
        for (size_t j = first; j < first + period; ++j) {
          signatures.push_back(segments_[j].signature);
        }
        if (std::find(rejected_.begin(), rejected_.end(), signatures) != rejected_.end()) {
          return false;  // planned before (in this phase or another) and not adopted: not again at every pass
        }
        if (!plan_period(first, period)) {
          if (rejected_.size() == kKeptRejected) {
            rejected_.pop_front();
          }
          rejected_.push_back(std::move(signatures));
          return false;
        }
        plan_signatures_ = std::move(signatures);
        return true;
      }
    }
    return false;
  }

  bool plan_period(size_t first, size_t period) {  // under mutex_
    ++plans_;
    const uint64_t origin = segments_[first].start;
    const uint64_t length = segments_[first + period].start - origin;  // ticks in a period
    struct Placed {
      size_t size, ordinal;
      uint64_t from, to;  // alive over [from, to) of the period's ticks, to > length: wraps
      uint64_t offset;
    };
    std::vector<Placed> blocks;
    size_t ordinal = 0;
    for (size_t j = first; j < first + period; ++j) {
      for (const Allocation& a : segments_[j].allocations) {
        const uint64_t from = a.allocated_at - origin;
        // Freed by the end of the newer repetition, and not alive for a whole period.
        if (a.freed_at != kAlive && a.freed_at - origin - from < length) {
          blocks.push_back(Placed{a.size, ordinal, from, a.freed_at - origin, 0});
        }
        ++ordinal;
      }
    }
    if (blocks.empty() || blocks.size() > kMaxPlanned) {
      return false;
    }
    auto overlap = [length](const Placed& a, const Placed& b) {
      // Each lifetime is [from, min(to, length)) and, when it wraps, [0, to - length) too.
      auto meet = [](uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1) { return a0 < b1 && b0 < a1; };
      const uint64_t a_end = std::min(a.to, length), b_end = std::min(b.to, length);
      return meet(a.from, a_end, b.from, b_end) || (a.to > length && meet(0, a.to - length, b.from, b_end)) ||
             (b.to > length && meet(a.from, a_end, 0, b.to - length)) ||
             (a.to > length && b.to > length);  // both alive at the period's start
    };
    // Greedy placement in a given order: each block at the lowest offset (or, with ``tightest``, in
    // the smallest gap) where no block alive with it lies. Which order packs best depends on the
    // pattern, so several are tried and the smallest total kept.
    auto place = [&](const std::vector<size_t>& order, bool tightest, std::vector<uint64_t>& offsets) {
      std::vector<size_t> placed;
      uint64_t total = 0;
      for (const size_t i : order) {
        std::vector<std::pair<uint64_t, uint64_t>> taken;  // (offset, end) of placed blocks alive with it
        for (const size_t j : placed) {
          if (overlap(blocks[i], blocks[j])) {
            taken.emplace_back(offsets[j], offsets[j] + blocks[j].size);
          }
        }
        std::sort(taken.begin(), taken.end());
        uint64_t edge = 0, best = UINT64_MAX, best_gap = UINT64_MAX;
        for (const auto& [start, end] : taken) {
          if (start >= edge + blocks[i].size && (best == UINT64_MAX || (tightest && start - edge < best_gap))) {
            best = edge;
            best_gap = start - edge;
          }
          edge = std::max(edge, end);
        }
        offsets[i] = best == UINT64_MAX ? edge : best;
        total = std::max(total, offsets[i] + blocks[i].size);
        placed.push_back(i);
      }
      return total;
    };
    std::vector<size_t> by_size(blocks.size()), by_lifetime(blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) {
      by_size[i] = by_lifetime[i] = i;
    }
    auto lifetime = [&](size_t i) { return blocks[i].to - blocks[i].from; };
    std::stable_sort(by_size.begin(), by_size.end(), [&](size_t a, size_t b) {
      return blocks[a].size != blocks[b].size ? blocks[a].size > blocks[b].size : lifetime(a) > lifetime(b);
    });
    std::stable_sort(by_lifetime.begin(), by_lifetime.end(),
                     [&](size_t a, size_t b) { return lifetime(a) != lifetime(b) ? lifetime(a) > lifetime(b) : blocks[a].size > blocks[b].size; });
    uint64_t total = UINT64_MAX;
    std::vector<uint64_t> offsets(blocks.size()), trial(blocks.size());
    for (const auto* order : {&by_size, &by_lifetime}) {
      for (const bool tightest : {false, true}) {
        const uint64_t got = place(*order, tightest, trial);
        if (got < total) {
          total = got;
          offsets.swap(trial);
        }
      }
    }
    for (size_t i = 0; i < blocks.size(); ++i) {
      blocks[i].offset = offsets[i];
    }
    size_t held = 0;  // what best fit's layout held in the newer repetition (not now: the pool may have been emptied)
    for (size_t j = first + period; j < first + 2 * period; ++j) {
      held = std::max(held, segments_[j].held);
    }
    if (total > held) {
      return false;
    }
    plan_.assign(ordinal, Planned{0, kUnplanned});
    for (size_t j = first, k = 0; j < first + period; ++j) {
      for (const Allocation& a : segments_[j].allocations) {
        plan_[k++].size = a.size;
      }
    }
    for (const Placed& b : blocks) {
      plan_[b.ordinal].offset = b.offset;
    }
    plan_bytes_ = total;
    phase_ = 0;
    ordinal_ = 0;
    arena_ = 0;
    return true;
  }

  void map_arena() {  // under mutex_
    void* ptr = mmap(nullptr, plan_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {
      drop_plan();  // best fit goes on in what the pool has
      return;
    }
    ++mapped_;
    arena_ = reinterpret_cast<uintptr_t>(ptr);
    free_.emplace(arena_, FreeRange{plan_bytes_, pass_});
    free_bytes_ += plan_bytes_;
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

  struct Planned {
    size_t size;
    uint64_t offset;  // from the plan's range start, or kUnplanned
  };

  c10::Allocator* const previous_;
  std::mutex mutex_;
  std::unordered_map<void*, Block> in_use_;
  std::unordered_map<void*, Block> foreign_;  // the previous allocator's large blocks, until freed
  std::map<uintptr_t, FreeRange> free_;  // by start address, neighbours merged
  size_t in_use_bytes_ = 0, free_bytes_ = 0, peak_in_use_bytes_ = 0;
  size_t reused_ = 0, mapped_ = 0, unmapped_ = 0, planned_ = 0, plans_ = 0;
  uint64_t pass_ = 0, clock_ = 0;
  std::deque<Segment> segments_{Segment{0, 0}};  // the last kKeptSegments, the one being recorded last
  std::vector<Planned> plan_;  // per request of the period, in order; empty: no plan
  std::vector<uint64_t> plan_signatures_;  // of the period's segments
  std::deque<std::vector<uint64_t>> rejected_;  // the segment signatures of the last periods planned and not adopted
  size_t plan_bytes_ = 0, phase_ = 0, ordinal_ = 0;  // phase_: the period's segment being recorded
  uintptr_t arena_ = 0;  // the plan's mapped range, or 0
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
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "in_use_bytes", 0, "cached_bytes", 0,
                         "peak_in_use_bytes", 0, "cached_blocks", 0, "reused", 0, "mapped", 0, "unmapped", 0,
                         "plan_bytes", 0, "planned", 0, "plans", 0);
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
