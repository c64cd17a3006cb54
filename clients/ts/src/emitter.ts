//! A tiny typed event emitter; `on` returns the function that unsubscribes.

export class Emitter<M extends Record<string, unknown>> {
  private fns = new Map<PropertyKey, Set<(v: never) => void>>();

  on<K extends keyof M>(type: K, fn: (value: M[K]) => void): () => void {
    let set = this.fns.get(type);
    if (!set) this.fns.set(type, (set = new Set()));
    set.add(fn as (v: never) => void);
    return () => set.delete(fn as (v: never) => void);
  }

  protected emit<K extends keyof M>(type: K, value: M[K]): void {
    for (const fn of [...(this.fns.get(type) ?? [])]) {
      try {
        (fn as (v: M[K]) => void)(value);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}
