/// Where each device's control lease and e-stops are kept (contract §12): one SQLite row per device, or one PostgreSQL row shared by a fleet.
import Foundation
import RelayCore

/// Each device's `ControlLeaseMachine`, kept so that its rules hold wherever its parties are:
/// every event is applied to the stored record inside one transaction on the device's row (two
/// apps on two nodes asking at once get one grant), and the record, its `epoch` with it,
/// outlives the process and any node (the epoch is never reused). `RelayStore` keeps it in the
/// SQLite file, `PostgresStore` in PostgreSQL.
public protocol ControlLedger: Sendable {
    /// The device's record (a fresh one when nobody has driven it yet).
    func control(of deviceID: String) async throws(StoreError) -> ControlLeaseMachine
    /// Applies `event` to the device's record and keeps the result, as one transaction. `event`
    /// may run more than once (a transaction PostgreSQL broke off runs again): it only changes
    /// the record and returns what the change decided.
    func updateControl<T: Sendable>(of deviceID: String, _ event: @escaping @Sendable (inout ControlLeaseMachine) -> T) async throws(StoreError) -> T
}

/// The record as the stores keep it: JSON text of the machine (its lease, e-stops and epoch).
public enum ControlRecordText {
    public static func encode(_ machine: ControlLeaseMachine) throws(StoreError) -> String {
        do {
            return String(decoding: try JSONEncoder().encode(machine), as: UTF8.self)
        } catch {
            throw StoreError("cannot encode a control record: \(error)")
        }
    }

    public static func decode(_ text: String?) throws(StoreError) -> ControlLeaseMachine {
        guard let text else { return ControlLeaseMachine() }
        do {
            return try JSONDecoder().decode(ControlLeaseMachine.self, from: Data(text.utf8))
        } catch {
            throw StoreError("a control record in the store is unreadable: \(error)")
        }
    }
}
