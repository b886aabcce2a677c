/// The per-message path without sockets, for the microbenchmarks (an SPI door into a real switchboard).
import DeviceAuth
import Foundation
import Logging
import RelayCore
import Registry
import TURNBroker

/// The relay's per-message path without sockets, for the microbenchmarks (BENCHMARKS.md): a
/// real switchboard with an app and a device in an open session. `relay` hands a text frame
/// from the app to the switchboard, as a socket's reader does, and takes what the device's
/// link would write, as its writer does (acking it, as a client does).
@_spi(Benchmarks) public final class SignalingPath: Sendable {
    let switchboard: Switchboard
    let app: Link
    let device: Link
    let deviceGeneration: Int
    let appGeneration: Int
    /// The open session's id.
    public let sessionID: String

    /// A switchboard on a scratch store at `storePath`, with the app's session to the device
    /// open; app tokens would be checked with `tokenSecret` (the path admits its parties directly).
    public init(storePath: String, tokenSecret: [UInt8]) async throws {
        var logger = Logger(label: "relay.bench")
        logger.logLevel = .critical
        let store = try RelayStore(path: storePath)
        let table = LocalSessionTable()
        switchboard = Switchboard(
            table: table,
            turn: StaticProvider(),
            directory: store,
            tokens: AppTokenVerifier(
                configuration: .init(algorithms: [.hs256], secretKeys: [.init(secret: tokenSecret)])
            ),
            limits: .init(
                maxSessionsPerDevice: 4,
                maxSessionsPerApp: 8,
                keptMessages: 256,
                keptBytes: 1 << 20,
                rateBurst: 100_000,
                ratePerSecond: 100_000,
                maxRefusedInARow: 100,
                resumeGrace: .seconds(30),
                setupTimeout: .seconds(3600),
                tokenLeeway: 30
            ),
            journal: StoreWriter(store: store, interval: .seconds(3600), logger: logger),
            // Links tell it what changed, as in the relay; nothing here writes it.
            liveState: LiveStateJournal(store: store, interval: .seconds(3600), links: { table.allLinks }, logger: logger),
            metrics: RelayMetrics(),
            refreshDelay: { _ in .seconds(3600) },
            // Not run: nothing measured here waits on anything slow.
            errands: Errands(),
            logger: logger
        )
        let deviceAdmission = switchboard.admit(.device(DeviceRecord(deviceID: "bench-robot", secrets: [])), resume: nil, dropTransport: {})
        let appAdmission = switchboard.admit(
            .app(AppIdentity(userID: "bench-user", expiresAt: Date().timeIntervalSince1970 + 86_400, devices: ["bench-robot"])),
            resume: nil,
            dropTransport: {}
        )
        (device, deviceGeneration, app, appGeneration) = (
            deviceAdmission.link, deviceAdmission.generation, appAdmission.link, appAdmission.generation
        )
        device.push(generation: deviceGeneration) {}
        app.push(generation: appGeneration) {}
        if case .alongside(let work) = switchboard.receive(text: #"{"type":"webrtc_request","device_id":"bench-robot"}"#, from: app) { await work() }
        guard let request = app.takePushed(generation: appGeneration)?.frames.first(where: { $0.text.contains("webrtc_credentials") }),
            let session = (try? JSONParser.object(request.text))?["session_id"]?.stringValue
        else { throw SetUpFailed() }
        sessionID = session
        _ = device.takePushed(generation: deviceGeneration)
    }

    struct SetUpFailed: Error {}

    /// Decodes and validates one client message; false when it is refused.
    public static func decode(_ text: String) -> Bool {
        (try? ClientEnvelope(text: text)) != nil
    }

    /// The app sends `text` (a message handled at once, such as an ICE candidate or an offer);
    /// returns the bytes the device's link would write.
    public func relay(_ text: String) -> Int {
        _ = switchboard.receive(text: text, from: app)
        guard let frames = device.takePushed(generation: deviceGeneration)?.frames, let last = frames.last else { return 0 }
        device.acknowledge(through: last.seq)
        return frames.reduce(0) { $0 + $1.text.utf8.count }
    }
}
