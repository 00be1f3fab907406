/**
 * A small sorted set of (number, id) pairs: binary search for insert/remove, in-order walks.
 * Used by the Kafka backend's in-memory view for the due order (per priority class), lapsed
 * leases and purge order. Insert and remove are O(log n) to find plus an array splice (a memmove),
 * which stays well under a millisecond for the ~10^5 live mails one view is sized for.
 */
export interface KeyEntry {
  k: number;
  id: string;
}

function cmp(a: KeyEntry, b: KeyEntry): number {
  return a.k - b.k || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

export class SortedKeys {
  private readonly items: KeyEntry[] = [];

  get size(): number {
    return this.items.length;
  }

  /** Index of the first entry not less than `e`. */
  private lowerBound(e: KeyEntry): number {
    let lo = 0;
    let hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cmp(this.items[mid]!, e) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  add(k: number, id: string): void {
    const e = { k, id };
    const i = this.lowerBound(e);
    const at = this.items[i];
    if (at && at.k === k && at.id === id) return;
    this.items.splice(i, 0, e);
  }

  delete(k: number, id: string): void {
    const i = this.lowerBound({ k, id });
    const at = this.items[i];
    if (at && at.k === k && at.id === id) this.items.splice(i, 1);
  }

  first(): KeyEntry | undefined {
    return this.items[0];
  }

  /** Entries with k <= maxK, in order. */
  *upTo(maxK: number): Generator<KeyEntry> {
    for (const e of this.items) {
      if (e.k > maxK) return;
      yield e;
    }
  }
}
