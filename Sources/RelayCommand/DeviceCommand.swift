/// `relay device`: the registry from the command line.
import ArgumentParser
import Configuration
import Foundation
import Logging
import PostgresStore
import Registry

/// `relay device ...` (contract §9): the registry from the command line. It opens the same
/// store as a running relay: the SQLite file (WAL lets both work at once), or with
/// `RELAY_DATABASE_URL` the fleet's PostgreSQL. A running relay picks up a revocation within
/// `RELAY_REGISTRY_POLL_MS`, and every other change at the next connection.
struct Device: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage registered devices (robots).",
        subcommands: [Add.self, List.self, Grant.self, Ungrant.self, Rotate.self, Revoke.self, Unrevoke.self, Delete.self]
    )

    struct StoreOptions: ParsableArguments {
        @Option(help: "The SQLite store (default: RELAY_DB, else ./relay.sqlite).") var db: String?
        @Option(help: "The fleet's PostgreSQL, postgres://user:password@host:5432/database (default: RELAY_DATABASE_URL).")
        var databaseURL: String?
        @Flag(help: "Print JSON for scripts instead of a table.") var json = false
        @OptionGroup var settings: SettingsOptions

        /// The store a running relay with the same settings uses: PostgreSQL when a database URL
        /// is given, else the SQLite file.
        /// Runs `body` on the store a running relay with the same settings uses: PostgreSQL
        /// when a database URL is given (its pool runs for as long as `body` does), else the SQLite file.
        func withStore(_ body: (any RelayRegistry) async throws -> Void) async throws {
            let reader = try settings.reader(command: "relay device")
            var url = databaseURL
            if url == nil, db == nil { url = reader.string(forKey: ["relay", "database", "url"]) }
            if let url {
                let store = try registry { () throws(StoreError) in
                    try PostgresStore(url: url, role: "relay-device", logger: Logger(label: "relay.device"))
                }
                try await store.whileRunning {
                    try await registry { () async throws(StoreError) in try await store.migrate() }
                    try await body(store)
                }
                return
            }
            var path = db
            if path == nil { path = reader.string(forKey: ["relay", "db"], default: "./relay.sqlite") }
            guard let path else { throw ExitCode(1) }
            try await body(try registry { () throws(StoreError) in try RelayStore(path: path) })
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Register a device and print its secret (shown once).")
        @Argument(help: "The device id (1-128 characters of [A-Za-z0-9._:-]).") var deviceID: String
        @Option(name: .customLong("owner"), help: "A user id (JWT sub) who may reach the device (repeat for several).") var owners: [String] = []
        @Option(help: "A label for people.") var label = ""
        @OptionGroup var options: StoreOptions

        func run() async throws {
            try await options.withStore { store in
                let (entry, secret) = try await registry { () async throws(StoreError) in
                    try await store.addDevice(deviceID, owners: owners, label: label, now: Date())
                }
                if options.json {
                    printJSON(["device": entry.json, "secret": secret])
                } else {
                    print(Table.devices([entry]))
                    print("\nSecret (shown only now; give it to the robot):\n\(secret)")
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List registered devices.")
        @OptionGroup var options: StoreOptions

        func run() async throws {
            try await options.withStore { store in
                let entries = try await registry { () async throws(StoreError) in try await store.devices() }
                if options.json {
                    printJSON(["devices": entries.map(\.json)])
                } else {
                    print(entries.isEmpty ? "No devices registered." : Table.devices(entries))
                }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a device: it can no longer connect, and a running relay disconnects it."
        )
        @Argument(help: "The device id.") var deviceID: String
        @OptionGroup var options: StoreOptions

        func run() async throws {
            try await options.withStore { store in
                guard let entry = try await registry({ () async throws(StoreError) in try await store.revoke(deviceID, now: Date()) }) else {
                    throw failure(.unknownDevice(deviceID))
                }
                if options.json { printJSON(["device": entry.json]) } else { print(Table.devices([entry])) }
            }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give a device a new secret (shown once); the old one stays valid until --finish.",
            discussion: """
                Rotation without downtime: run `relay device rotate <id>`, put the new secret on the robot, \
                then run `relay device rotate <id> --finish` to stop accepting the old secret.
                """
        )
        @Argument(help: "The device id.") var deviceID: String
        @Flag(help: "Drop the previous secret (after the robot has the new one).") var finish = false
        @OptionGroup var options: StoreOptions

        func run() async throws {
            try await options.withStore { store in
                if finish {
                    try await registry { () async throws(StoreError) in try await store.dropPreviousSecret(deviceID) }
                    if options.json {
                        printJSON(["device_id": deviceID, "secrets": 1])
                    } else {
                        print("Only the newest secret of \(deviceID) is valid now.")
                    }
                    return
                }
                let secret = try await registry { () async throws(StoreError) in try await store.rotate(deviceID) }
                if options.json {
                    printJSON(["device_id": deviceID, "secret": secret])
                } else {
                    print("New secret for \(deviceID) (shown only now):\n\(secret)")
                    print("The previous secret stays valid until: relay device rotate \(deviceID) --finish")
                }
            }
        }
    }

    struct Ungrant: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Take a user (JWT sub) off a device's owners.")
        @OptionGroup var owners: OwnerOptions
        @OptionGroup var options: StoreOptions

        func run() async throws {
            try await owners.change(options) { store, deviceID, owner async throws(StoreError) in try await store.ungrant(deviceID, owner: owner) }
        }
    }

    struct Unrevoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a revoked device connect again, with the secrets it had.")
        @Argument(help: "The device id.") var deviceID: String
        @OptionGroup var options: StoreOptions

        func run() async throws {
            try await options.withStore { store in
                let entry = try await registry { () async throws(StoreError) in try await store.unrevoke(deviceID) }
                if options.json { printJSON(["device": entry.json]) } else { print(Table.devices([entry])) }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Forget a revoked device: its secrets and owners (its audit entries stay).",
            discussion: "Revoke it first (that disconnects it). With RELAY_DEVICE_MASTER_KEY set, a device the registry does not know may connect with its derived secret."
        )
        @Argument(help: "The device id.") var deviceID: String
        @OptionGroup var options: StoreOptions

        func run() async throws {
            try await options.withStore { store in
                try await registry { () async throws(StoreError) in try await store.deleteDevice(deviceID) }
                if options.json { printJSON(["device_id": deviceID, "deleted": true]) } else { print("Deleted \(deviceID).") }
            }
        }
    }

    struct Grant: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a user (JWT sub) reach a device.")
        @OptionGroup var owners: OwnerOptions
        @OptionGroup var options: StoreOptions

        func run() async throws {
            try await owners.change(options) { store, deviceID, owner async throws(StoreError) in try await store.grant(deviceID, owner: owner) }
        }
    }

    /// A device and the `--owner`s that `grant` and `ungrant` add or take off.
    struct OwnerOptions: ParsableArguments {
        @Argument(help: "The device id.") var deviceID: String
        @Option(name: .customLong("owner"), help: "A user id (repeat for several).") var owners: [String]

        func validate() throws {
            guard !owners.isEmpty else { throw ValidationError("Name at least one --owner") }
        }

        /// Applies `change` for each owner, then prints the device as it ends up.
        func change(
            _ options: StoreOptions,
            _ change: (any RelayRegistry, String, String) async throws(StoreError) -> DeviceEntry
        ) async throws {
            try await options.withStore { store in
                var entry: DeviceEntry?
                for owner in owners {
                    entry = try await registry { () async throws(StoreError) in try await change(store, deviceID, owner) }
                }
                if options.json { printJSON(["device": entry?.json ?? [:]]) } else if let entry { print(Table.devices([entry])) }
            }
        }
    }
}

/// Runs a store call; a failure becomes one line on stderr and exit status 1.
private func registry<T>(_ body: () async throws(StoreError) -> T) async throws -> T {
    do {
        return try await body()
    } catch {
        throw failure(error)
    }
}

private func registry<T>(_ body: () throws(StoreError) -> T) throws -> T {
    do {
        return try body()
    } catch {
        throw failure(error)
    }
}

private func failure(_ error: StoreError) -> ExitCode {
    printError("relay device: \(error)")
    return ExitCode(1)
}

private func printJSON(_ value: Any) {
    let data = (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    print(String(decoding: data, as: UTF8.self))
}

extension DeviceEntry {
    fileprivate var json: [String: Any] {
        [
            "device_id": deviceID,
            "owners": owners,
            "label": label,
            "revoked": revoked,
            "revoked_at": revokedAt.map { $0.formatted(.iso8601) } ?? NSNull(),
            "created_at": createdAt.formatted(.iso8601),
            "last_seen_at": lastSeenAt.map { $0.formatted(.iso8601) } ?? NSNull(),
            "secrets": secrets.count,
        ]
    }
}

/// Plain aligned columns for people.
enum Table {
    static func devices(_ entries: [DeviceEntry]) -> String {
        render(
            header: ["DEVICE", "OWNERS", "LABEL", "STATUS", "SECRETS", "CREATED", "LAST SEEN"],
            rows: entries.map { entry in
                [
                    entry.deviceID,
                    entry.owners.isEmpty ? "-" : entry.owners.joined(separator: ","),
                    entry.label.isEmpty ? "-" : entry.label,
                    entry.revoked ? "revoked" : "active",
                    String(entry.secrets.count),
                    entry.createdAt.formatted(.iso8601),
                    entry.lastSeenAt?.formatted(.iso8601) ?? "never",
                ]
            }
        )
    }

    static func render(header: [String], rows: [[String]]) -> String {
        let all = [header] + rows
        let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
        return all.map { row in
            row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}
