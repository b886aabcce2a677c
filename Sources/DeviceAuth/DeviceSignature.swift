/// A device's HMAC-signed connect query: parsing, signing, and checking it against the device's secrets.
import OpenSSLCrypto

/// The signed query parameters a device connects with (contract §1.2):
/// `device_id`, `ts`, `nonce` and `sig` = hex(HMAC-SHA256(secret, device_id + "\n" + ts + "\n" + nonce)).
public struct DeviceSignature: Sendable, Equatable {
    public var deviceID: String
    public var timestamp: Int
    /// `ts` exactly as the device sent it: the signature covers these characters (contract
    /// §1.2), so a leading zero is part of what was signed.
    public var timestampText: String
    public var nonce: String
    public var signature: String

    public init(deviceID: String, timestamp: Int, timestampText: String? = nil, nonce: String, signature: String) {
        self.deviceID = deviceID
        self.timestamp = timestamp
        self.timestampText = timestampText ?? String(timestamp)
        self.nonce = nonce
        self.signature = signature
    }

    /// Parses and checks the form of the parameters; `parameter` returns a query parameter's value.
    public init(parameter: (String) -> String?) throws(AuthFailure) {
        let missing = ["device_id", "ts", "nonce", "sig"].filter { parameter($0) == nil }
        guard missing.isEmpty else { throw .missingDeviceParameters(missing) }
        let deviceID = parameter("device_id")!
        let ts = parameter("ts")!
        let nonce = parameter("nonce")!
        let signature = parameter("sig")!
        guard Self.isValidDeviceID(deviceID) else { throw .malformedDeviceID }
        guard ts.utf8.count <= 12, ts.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let timestamp = Int(ts) else { throw .malformedTimestamp }
        guard (16...64).contains(nonce.utf8.count), nonce.utf8.allSatisfy(Self.isNonceByte) else { throw .malformedNonce }
        guard signature.utf8.count == 64, signature.utf8.allSatisfy(Self.isLowerHexByte) else { throw .malformedSignature }
        self.init(deviceID: deviceID, timestamp: timestamp, timestampText: ts, nonce: nonce, signature: signature)
    }

    /// The message the signature covers: `ts` as sent.
    public static func message(deviceID: String, timestampText: String, nonce: String) -> String {
        "\(deviceID)\n\(timestampText)\n\(nonce)"
    }

    /// The signature of these parameters with `secret`, as lowercase hex.
    public static func mac(deviceID: String, timestampText: String, nonce: String, secret: String) -> String {
        macBytes(deviceID: deviceID, timestampText: timestampText, nonce: nonce, secret: secret).hexString
    }

    /// The signature of these parameters with `secret`, as its 32 bytes.
    static func macBytes(deviceID: String, timestampText: String, nonce: String, secret: String) -> [UInt8] {
        LibCrypto.hmacSHA256(key: Array(secret.utf8), message: Array(message(deviceID: deviceID, timestampText: timestampText, nonce: nonce).utf8))
    }

    /// `sig` as bytes (its form, 64 lowercase hex digits, was checked when it was parsed).
    var signatureBytes: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        var high: UInt8?
        for digit in signature.utf8 {
            let value = digit >= 0x61 ? digit - 0x57 : digit &- 0x30
            if let first = high {
                bytes.append(first << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        return bytes
    }

    /// Signs the connection parameters with `secret`.
    public static func sign(deviceID: String, timestamp: Int, nonce: String, secret: String) -> DeviceSignature {
        let text = String(timestamp)
        return DeviceSignature(
            deviceID: deviceID,
            timestamp: timestamp,
            timestampText: text,
            nonce: nonce,
            signature: mac(deviceID: deviceID, timestampText: text, nonce: nonce, secret: secret)
        )
    }

    /// A fresh random nonce (128 bits, hex).
    public static func makeNonce() -> String {
        LibCrypto.randomBytes(16).hexString
    }

    /// The secret derived from the master key for a device with no registry row.
    public static func derivedSecret(deviceID: String, masterKey: String) -> String {
        LibCrypto.hmacSHA256(key: Array(masterKey.utf8), message: Array(deviceID.utf8)).hexString
    }

    /// The URL query that carries this signature.
    public var query: String {
        "device_id=\(deviceID)&ts=\(timestampText)&nonce=\(nonce)&sig=\(signature)"
    }

    /// True when `id` is 1-128 characters of `[A-Za-z0-9._:-]`.
    public static func isValidDeviceID(_ id: String) -> Bool {
        (1...128).contains(id.utf8.count) && id.utf8.allSatisfy { isAlphanumeric($0) || $0 == 0x2E || $0 == 0x5F || $0 == 0x3A || $0 == 0x2D }
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
    }

    private static func isNonceByte(_ byte: UInt8) -> Bool {
        isAlphanumeric(byte) || byte == 0x5F || byte == 0x2D
    }

    private static func isLowerHexByte(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x66)
    }
}

/// Admits devices: signature form, time window, secret (registry or derived), constant-time
/// compare, revocation, and finally the one-time nonce.
/// Spent device nonces shared by every node of a fleet: a nonce spent on one node is refused
/// on all of them.
public protocol NonceLedger: Sendable {
    /// Spends `nonce` of `deviceID` until `expiresAt` (Unix seconds); false when it was spent already.
    func spend(deviceID: String, nonce: String, expiresAt: Int) async throws -> Bool
}

public struct DeviceAuthenticator: Sendable {
    public var directory: any DeviceDirectory
    /// `RELAY_DEVICE_MASTER_KEY`: derives a secret for devices the registry does not list.
    public var masterKey: String?
    /// Accepted clock difference in seconds (`RELAY_DEVICE_SIG_WINDOW_S`).
    public var windowSeconds: Int
    public var nonces: NonceCache
    /// The fleet's spent nonces, checked after this node's own cache (nil: this node only).
    public var ledger: (any NonceLedger)?

    public init(
        directory: any DeviceDirectory,
        masterKey: String?,
        windowSeconds: Int = 300,
        nonces: NonceCache = NonceCache(),
        ledger: (any NonceLedger)? = nil
    ) {
        self.directory = directory
        self.masterKey = masterKey
        self.windowSeconds = windowSeconds
        self.nonces = nonces
        self.ledger = ledger
    }

    /// Checks `signature` at `now` (Unix seconds) and returns the device's record (a synthesized
    /// one for master-key devices). The nonce is spent only when everything else passed.
    public func authenticate(_ signature: DeviceSignature, now: Int) async throws(AuthFailure) -> DeviceRecord {
        guard abs(now - signature.timestamp) <= windowSeconds else { throw .staleTimestamp(window: windowSeconds, now: now) }
        let registered: DeviceRecord?
        do {
            registered = try await directory.device(signature.deviceID)
        } catch {
            throw AuthFailure(.unavailable, reason: "registry_unavailable", "Device registry unavailable")
        }
        let record: DeviceRecord
        if let registered {
            record = registered
        } else if let masterKey {
            record = DeviceRecord(
                deviceID: signature.deviceID,
                secrets: [DeviceSignature.derivedSecret(deviceID: signature.deviceID, masterKey: masterKey)]
            )
        } else {
            throw .unknownDevice
        }
        let presented = signature.signatureBytes
        var matched = false
        for secret in record.secrets where !secret.isEmpty {
            let expected = DeviceSignature.macBytes(deviceID: signature.deviceID, timestampText: signature.timestampText, nonce: signature.nonce, secret: secret)
            // Non-short-circuiting on purpose: every secret is compared, whichever matches.
            matched = LibCrypto.constantTimeEquals(expected, presented) || matched
        }
        guard matched else { throw .badDeviceSignature }
        guard !record.revoked else { throw .deviceRevoked }
        switch nonces.insert(deviceID: signature.deviceID, nonce: signature.nonce, expiresAt: signature.timestamp + windowSeconds, now: now) {
        case .accepted: break
        case .replayed: throw .replayedNonce
        case .deviceFull: throw .deviceNoncesExhausted
        case .full: throw .replayCacheFull
        }
        if let ledger {
            let fresh: Bool
            do {
                fresh = try await ledger.spend(deviceID: signature.deviceID, nonce: signature.nonce, expiresAt: signature.timestamp + windowSeconds)
            } catch {
                // A nonce that cannot be spent fleet-wide is not accepted (fail closed).
                throw AuthFailure(.unavailable, reason: "nonces_unavailable", "The relay cannot reach its store; connect again shortly")
            }
            guard fresh else { throw .replayedNonce }
        }
        return record
    }
}
