/// A dictionary split into independently locked shards: the table's maps without a global lock.
import Synchronization

/// A dictionary split into independently locked shards, so unrelated keys never contend.
final class ShardedMap<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private final class Shard: Sendable {
        let map = Mutex<[Key: Value]>([:])
    }

    private let shards: [Shard]

    init(shardCount: Int = 16) {
        shards = (0..<shardCount).map { _ in Shard() }
    }

    private func shard(_ key: Key) -> Shard {
        shards[Int(UInt(bitPattern: key.hashValue) % UInt(shards.count))]
    }

    subscript(key: Key) -> Value? {
        shard(key).map.withLock { $0[key] }
    }

    /// Reads and changes the value for `key` under its shard's lock.
    @discardableResult
    func update<Result: Sendable>(_ key: Key, _ body: (inout Value?) -> Result) -> Result {
        shard(key).map.withLock { map in
            var value = map[key]
            let result = body(&value)
            map[key] = value
            return result
        }
    }

    var count: Int {
        shards.reduce(0) { total, shard in total + shard.map.withLock { $0.count } }
    }

    var keys: [Key] {
        shards.flatMap { shard in shard.map.withLock { Array($0.keys) } }
    }

    var values: [Value] {
        shards.flatMap { shard in shard.map.withLock { Array($0.values) } }
    }
}
