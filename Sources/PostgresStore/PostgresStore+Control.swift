/// The control records (contract §12) in PostgreSQL, shared by every node of a fleet.
import PostgresNIO
import Registry
import RelayCore

extension PostgresStore: ControlLedger {
    public func control(of deviceID: String) async throws(StoreError) -> ControlLeaseMachine {
        let text = try await call("reading a device's control") {
            var record: String?
            for try await text in try await self.client.query("SELECT record FROM relay_control WHERE device_id = \(deviceID)", logger: self.logger)
                .decode(String.self)
            {
                record = text
            }
            return record
        }
        return try ControlRecordText.decode(text)
    }

    public func updateControl<T: Sendable>(of deviceID: String, _ event: @escaping @Sendable (inout ControlLeaseMachine) -> T) async throws(StoreError) -> T {
        try await transaction("changing a device's control") { connection in
            // The row exists and is locked before it is read: events for one device take turns
            // fleet-wide, the first one for a device included.
            try await connection.query(
                "INSERT INTO relay_control (device_id, record) VALUES (\(deviceID), \(try ControlRecordText.encode(ControlLeaseMachine()))) ON CONFLICT DO NOTHING",
                logger: self.logger
            )
            var record: String?
            for try await text in try await connection.query("SELECT record FROM relay_control WHERE device_id = \(deviceID) FOR UPDATE", logger: self.logger)
                .decode(String.self)
            {
                record = text
            }
            var machine = try ControlRecordText.decode(record)
            let decided = event(&machine)
            try await connection.query("UPDATE relay_control SET record = \(try ControlRecordText.encode(machine)) WHERE device_id = \(deviceID)", logger: self.logger)
            return decided
        }
    }
}
