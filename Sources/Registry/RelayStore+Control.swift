/// The control records (contract §12) in the SQLite file.
import GRDB
import RelayCore

extension RelayStore: ControlLedger {
    static func registerControlMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v6: control leases and e-stops (contract §12)") { db in
            try db.execute(sql: "CREATE TABLE device_control (device_id TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL)")
        }
    }

    public func control(of deviceID: String) async throws(StoreError) -> ControlLeaseMachine {
        try await run { try await self.pool.read { db in try Self.control(of: deviceID, in: db) } }
    }

    private static func control(of deviceID: String, in db: Database) throws -> ControlLeaseMachine {
        try ControlRecordText.decode(try String.fetchOne(db, sql: "SELECT record FROM device_control WHERE device_id = ?", arguments: [deviceID]))
    }

    public func updateControl<T: Sendable>(of deviceID: String, _ event: @escaping @Sendable (inout ControlLeaseMachine) -> T) async throws(StoreError) -> T {
        // One write transaction: SQLite runs one at a time, across processes too.
        try await run {
            try await self.pool.write { db -> T in
                var machine = try Self.control(of: deviceID, in: db)
                let decided = event(&machine)
                try db.execute(
                    sql: "INSERT INTO device_control (device_id, record) VALUES (?, ?) ON CONFLICT (device_id) DO UPDATE SET record = excluded.record",
                    arguments: [deviceID, try ControlRecordText.encode(machine)]
                )
                return decided
            }
        }
    }
}
