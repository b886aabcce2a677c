import DeviceAuth
import Synchronization

/// A device registry held in memory: for tests, and for a relay that admits devices by the
/// master key alone (no registry rows).
public final class InMemoryDeviceRegistry: DeviceDirectory {
    private let records: Mutex<[String: DeviceRecord]>

    public init(_ records: [DeviceRecord] = []) {
        self.records = Mutex(Dictionary(records.map { ($0.deviceID, $0) }, uniquingKeysWith: { _, last in last }))
    }

    public func device(_ deviceID: String) async throws -> DeviceRecord? {
        records.withLock { $0[deviceID] }
    }

    /// Adds or replaces a device's record.
    public func upsert(_ record: DeviceRecord) {
        records.withLock { $0[record.deviceID] = record }
    }
}
