import Benchmark
import DeviceAuth
import Foundation
@_spi(Benchmarks) import Relay

/// Per-connection and per-message costs of the relay, without sockets: `swift package benchmark`
/// (see BENCHMARKS.md). Each benchmark is one operation, so its time is the cost per item.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .mallocCountTotal, .throughput], maxDuration: .seconds(3))

    // An app's connect: its JWT (HS256) verified.
    let secret = Array("bench-secret-bench-secret-bench-s".utf8)
    let verifier = AppTokenVerifier(configuration: .init(algorithms: [.hs256], secretKeys: [.init(secret: secret)]))
    let now = Date().timeIntervalSince1970
    let token = try! AppTokenSigner(secret: secret).token(userID: "user-1", devices: ["robot-1"], now: now, lifetime: 3600)
    Benchmark("Connect: app JWT verification (HS256)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try verifier.verify(token, now: now)) }
    }

    // A device's connect: the signed query checked (window, HMAC-SHA256, constant-time compare,
    // nonce spent), for a master-key device. Every check spends a fresh nonce, made beforehand.
    let masterKey = "bench-master-key-bench-master-key-0"
    let deviceSecret = DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: masterKey)
    Benchmark("Connect: device signature check", configuration: .init(maxIterations: 50_000)) { benchmark in
        let authenticator = DeviceAuthenticator(directory: NoRegisteredDevices(), masterKey: masterKey, nonces: NonceCache(perDevice: 200_000))
        let timestamp = Int(now)
        let signatures = (0..<benchmark.scaledIterations.count).map { _ in
            DeviceSignature.sign(deviceID: "robot-1", timestamp: timestamp, nonce: DeviceSignature.makeNonce(), secret: deviceSecret)
        }
        benchmark.startMeasurement()
        for signature in signatures { blackHole(try await authenticator.authenticate(signature, now: timestamp)) }
    }

    // A message: decoded and validated; then decoded, routed to the peer and encoded, through a
    // real switchboard with the app's session to the device open.
    func ice(_ session: String) -> String {
        #"{"type":"webrtc_ice","session_id":"\#(session)","candidate":{"candidate":"candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0","sdpMid":"0","sdpMLineIndex":0}}"#
    }
    var sdp = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    while sdp.utf8.count < 4000 { sdp += "a=candidate:1 1 udp 2122260223 192.168.0.196 40000 typ host generation 0\r\n" }
    let escaped = sdp.replacingOccurrences(of: "\r\n", with: "\\r\\n")
    func offer(_ session: String) -> String { #"{"type":"webrtc_offer","session_id":"\#(session)","sdp":"\#(escaped)"}"# }
    func signalingPath() async throws -> SignalingPath {
        try await SignalingPath(
            storePath: FileManager.default.temporaryDirectory.appendingPathComponent("relay-micro-\(UUID().uuidString).sqlite").path,
            tokenSecret: Array("bench-secret-bench-secret-bench-s".utf8)
        )
    }
    let session = UUID().uuidString.lowercased()

    Benchmark("Message: decode ICE candidate (\(ice(session).utf8.count) B)") { benchmark in
        let text = ice(session)
        for _ in benchmark.scaledIterations { blackHole(SignalingPath.decode(text)) }
    }
    Benchmark("Message: decode SDP offer (\(offer(session).utf8.count) B)") { benchmark in
        let text = offer(session)
        for _ in benchmark.scaledIterations { blackHole(SignalingPath.decode(text)) }
    }
    // A thousand messages per sample through one switchboard (a fresh scratch store each).
    let routing = Benchmark.Configuration(metrics: [.wallClock, .mallocCountTotal, .throughput], scalingFactor: .kilo, maxDuration: .seconds(3))
    Benchmark("Message: relay ICE candidate (decode, route, encode)", configuration: routing) { benchmark in
        let path = try await signalingPath()
        let text = ice(path.sessionID)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { blackHole(path.relay(text)) }
        // Closing the scratch store is not part of the cost.
        benchmark.stopMeasurement()
    }
    Benchmark("Message: relay SDP offer (decode, route, encode)", configuration: routing) { benchmark in
        let path = try await signalingPath()
        let text = offer(path.sessionID)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { blackHole(path.relay(text)) }
        // Closing the scratch store is not part of the cost.
        benchmark.stopMeasurement()
    }
}

/// The registry as it is for master-key devices: no row.
struct NoRegisteredDevices: DeviceDirectory {
    func device(_ deviceID: String) async throws -> DeviceRecord? { nil }
}
