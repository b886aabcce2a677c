/// Child processes for tests (the relay, its commands, coturn), spawned without Foundation's `Process`.
import Foundation
import Synchronization

/// A child process started with `posix_spawn`. Foundation's `Process` adds a close action for
/// every descriptor number up to the highest one open and crashed (SIGSEGV in its `run`) when
/// the parallel tests held more than about a thousand; this closes every descriptor above 2 in
/// the child with one `closefrom` action instead. Standard input is `/dev/null`; standard output
/// and error go to `/dev/null` or to pipes whose reading ends it hands out.
public final class ChildProcess: Sendable {
    public enum Output: Sendable {
        case null
        /// A pipe of its own.
        case pipe
        /// The same pipe as standard output (standard error only).
        case standardOutput
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public let processIdentifier: Int32
    /// The reading ends of the pipes asked for.
    public let standardOutput: FileHandle?
    public let standardError: FileHandle?
    /// The wait status once reaped.
    private let status = Mutex<Int32?>(nil)

    private init(processIdentifier: Int32, standardOutput: FileHandle?, standardError: FileHandle?) {
        self.processIdentifier = processIdentifier
        self.standardOutput = standardOutput
        self.standardError = standardError
    }

    /// Starts `executable` (a path) with `arguments` and exactly `environment`, in `directory`.
    public static func run(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String],
        directory: String? = nil,
        standardOutput: Output = .null,
        standardError: Output = .null
    ) throws -> ChildProcess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var parentEnds: [Int32] = []
        var childEnds: [Int32] = []
        defer { for fd in childEnds { close(fd) } }
        func pipeEnds() throws -> (read: Int32, write: Int32) {
            var fds: [Int32] = [0, 0]
            guard pipe(&fds) == 0 else { throw Failure(description: "pipe: \(String(cString: strerror(errno)))") }
            // Not inherited by other children spawned meanwhile (the child gets its end by dup2).
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
            parentEnds.append(fds[0])
            childEnds.append(fds[1])
            return (fds[0], fds[1])
        }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var outRead: Int32?
        var outWrite: Int32?
        switch standardOutput {
        case .null, .standardOutput:
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        case .pipe:
            let ends = try pipeEnds()
            (outRead, outWrite) = (ends.read, ends.write)
            posix_spawn_file_actions_adddup2(&actions, ends.write, 1)
        }
        var errRead: Int32?
        switch standardError {
        case .null:
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        case .pipe:
            let ends = try pipeEnds()
            errRead = ends.read
            posix_spawn_file_actions_adddup2(&actions, ends.write, 2)
        case .standardOutput:
            guard let outWrite else { throw Failure(description: "standard error joins a standard output that is no pipe") }
            posix_spawn_file_actions_adddup2(&actions, outWrite, 2)
        }
        guard Self.addCloseFrom(&actions, 3) == 0 else { throw Failure(description: "posix_spawn_file_actions_addclosefrom_np failed") }
        if let directory {
            guard Self.addChdir(&actions, directory) == 0 else { throw Failure(description: "posix_spawn_file_actions_addchdir_np failed") }
        }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        guard result == 0 else {
            for fd in parentEnds { close(fd) }
            throw Failure(description: "posix_spawn \(executable): \(String(cString: strerror(result)))")
        }
        return ChildProcess(
            processIdentifier: pid,
            standardOutput: outRead.map { FileHandle(fileDescriptor: $0, closeOnDealloc: true) },
            standardError: errRead.map { FileHandle(fileDescriptor: $0, closeOnDealloc: true) }
        )
    }

    /// Whether it has not exited yet (reaping it if it has).
    public var isRunning: Bool {
        status.withLock { status in
            if status != nil { return false }
            var waitStatus: Int32 = 0
            guard waitpid(processIdentifier, &waitStatus, WNOHANG) == processIdentifier else { return true }
            status = waitStatus
            return false
        }
    }

    /// Blocks until it exits; its exit code, or the signal that ended it.
    @discardableResult
    public func waitUntilExit() -> Int32 {
        if let known = status.withLock({ $0 }) { return Self.code(known) }
        var waitStatus: Int32 = 0
        while waitpid(processIdentifier, &waitStatus, 0) == -1 && errno == EINTR {}
        status.withLock { $0 = $0 ?? waitStatus }
        return Self.code(status.withLock { $0 ?? waitStatus })
    }

    /// The exit code, or the signal that ended it (as Foundation's `terminationStatus`).
    public var terminationStatus: Int32 { waitUntilExit() }

    /// Whether it exited (rather than being ended by a signal); waits for it.
    public var exitedNormally: Bool {
        waitUntilExit()
        return status.withLock { ($0 ?? 0) & 0x7F == 0 }
    }

    /// Waits (at most `within`) for it to exit without blocking a concurrency thread.
    public func exited(within timeout: Duration = .seconds(30)) async throws -> Int32 {
        try await withDeadline(timeout, "process \(processIdentifier) to exit") { [self] in
            try await onOwnThread { [self] in waitUntilExit() }
        }
    }

    private static func code(_ status: Int32) -> Int32 {
        status & 0x7F == 0 ? (status >> 8) & 0xFF : status & 0x7F
    }

    // glibc's `_np` spawn actions are not in Swift's Glibc module: looked up once by name.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
    private static let addCloseFrom: AddCloseFrom = unsafeBitCast(dlsym(nil, "posix_spawn_file_actions_addclosefrom_np")!, to: AddCloseFrom.self)
    private static let addChdir: AddChdir = unsafeBitCast(dlsym(nil, "posix_spawn_file_actions_addchdir_np")!, to: AddChdir.self)
}
