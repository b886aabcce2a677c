import ArgumentParser
import Foundation
import RelayTestSupport

/// Shows that a reader that never reads cannot make the relay grow: one app floods large
/// offers at a device that stopped reading, while the relay's memory is sampled from /proc.
struct SlowReader: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "slow-reader", abstract: "Relay memory while a client floods one that never reads.")

    @Option(help: "Seconds to flood.") var seconds = 20
    @Option(help: "Bytes of SDP per offer.") var offerBytes = 60_000

    func run() async throws {
        quietLogging()
        let (relay, connector) = try await startRelayBinary()
        defer { relay.kill() }
        let device = try await connector.device("slow-robot")
        let app = try await connector.app("flooder", devices: ["slow-robot"])
        try app.send(["type": "webrtc_request", "device_id": "slow-robot"])
        let sessionID = try await app.next("webrtc_credentials")["session_id"] as! String
        _ = try await device.next("webrtc_request")
        device.stopReading()
        let before = relay.residentKiB ?? 0
        let sdp = String(repeating: "a", count: offerBytes)
        let deadline = ContinuousClock.now + .seconds(seconds)
        var sent = 0
        var peak = before
        var detachedAfter: Int?
        var nextSample = ContinuousClock.now
        while ContinuousClock.now < deadline {
            for _ in 0..<10 {
                try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": sdp])
                sent += 1
            }
            // Stay in step with the relay: its answer to a ping follows everything sent before.
            try app.send(["type": "ping"])
            while true {
                let message = try await app.next()
                if message["type"] as? String == "pong" { break }
                if message["type"] as? String == "peer_status", detachedAfter == nil { detachedAfter = sent }
            }
            if ContinuousClock.now >= nextSample {
                peak = max(peak, relay.residentKiB ?? 0)
                nextSample = ContinuousClock.now + .milliseconds(250)
            }
        }
        let after = relay.residentKiB ?? 0
        let flooded = sent * offerBytes
        print("slow reader: \(sent) offers of \(offerBytes) bytes (\(flooded / 1_048_576) MiB) sent at a device that never reads, over \(seconds) s")
        print("  device link dropped (detached) after \(detachedAfter.map { "\($0) offers (\($0 * offerBytes / 1024) KiB)" } ?? "never")")
        print("  relay memory (RSS): \(before / 1024) MiB before, peak \(peak / 1024) MiB, \(after / 1024) MiB after")
    }
}
