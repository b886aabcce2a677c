/// A `.env` file read the way a POSIX shell reads the same lines, so what `source .env` sees is what the relay sees.

/// Reads `NAME=value` assignments as `sh` would: blank lines and `#` comments skipped, an
/// optional `export`, values unquoted (a backslash escapes the next character), in single quotes
/// (literal) or in double quotes (`\"`, `\\`, `\$` and `` \` `` escaped; `$NAME` and `${NAME}`
/// expanded from earlier lines, then from `environment`), and a `#` comment after a value. A
/// line a shell would read differently (spaces around `=`, an unquoted space inside a value, an
/// unterminated quote) is a problem naming its line rather than a silent surprise.
public enum DotEnv {
    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public var problems: [String]
        public var description: String { problems.joined(separator: "\n") }
    }

    public static func parse(_ text: String, path: String, environment: [String: String] = [:]) throws(Invalid) -> [(name: String, value: String)] {
        var parser = Parser(characters: Array(text), path: path, environment: environment)
        parser.run()
        guard parser.problems.isEmpty else { throw Invalid(problems: parser.problems) }
        return parser.assignments
    }

    private struct Parser {
        let characters: [Character]
        let path: String
        let environment: [String: String]
        var index = 0
        var line = 1
        var assignments: [(name: String, value: String)] = []
        var problems: [String] = []

        init(characters: [Character], path: String, environment: [String: String]) {
            self.characters = characters
            self.path = path
            self.environment = environment
        }

        var current: Character? { index < characters.count ? characters[index] : nil }

        mutating func advance() {
            if current == "\n" { line += 1 }
            index += 1
        }

        mutating func skipBlanks() {
            while let character = current, character == " " || character == "\t" { advance() }
        }

        mutating func skipLine() {
            while let character = current, character != "\n" { advance() }
            advance()
        }

        mutating func problem(_ text: String, at line: Int) {
            problems.append("\(path) line \(line): \(text)")
        }

        static func isNameStart(_ character: Character) -> Bool { character == "_" || (character.isASCII && character.isLetter) }
        static func isName(_ character: Character) -> Bool { isNameStart(character) || (character.isASCII && character.isNumber) }

        mutating func name() -> String {
            var name = ""
            while let character = current, Self.isName(character) {
                name.append(character)
                advance()
            }
            return name
        }

        mutating func run() {
            while current != nil {
                skipBlanks()
                guard let first = current else { break }
                if first == "\n" || first == "#" {
                    skipLine()
                    continue
                }
                let start = line
                var name = name()
                if name == "export", current == " " || current == "\t" {
                    skipBlanks()
                    name = self.name()
                }
                guard let first = name.first, Self.isNameStart(first) else {
                    problem("expected NAME=value", at: start)
                    skipLine()
                    continue
                }
                guard current == "=" else {
                    problem(current == " " || current == "\t" ? "no spaces around '=' (a shell would run '\(name)' as a command)" : "expected '=' after \(name)", at: start)
                    skipLine()
                    continue
                }
                advance()
                if let value = value(start: start) {
                    assignments.append((name, value))
                }
            }
        }

        /// The value up to the end of its line (quotes may span lines), or nil after a problem.
        mutating func value(start: Int) -> String? {
            var value = ""
            while let character = current {
                switch character {
                case "\n":
                    advance()
                    return value
                case " ", "\t":
                    skipBlanks()
                    if current == nil || current == "\n" || current == "#" {
                        skipLine()
                        return value
                    }
                    problem("a space inside an unquoted value: quote the value", at: start)
                    skipLine()
                    return nil
                case "'":
                    advance()
                    while let inner = current, inner != "'" {
                        value.append(inner)
                        advance()
                    }
                    guard current == "'" else {
                        problem("unterminated single quote", at: start)
                        return nil
                    }
                    advance()
                case "\"":
                    advance()
                    while let inner = current, inner != "\"" {
                        if inner == "\\" {
                            advance()
                            guard let escaped = current else { break }
                            if escaped == "\n" {
                                advance()
                                continue
                            }
                            if !"\"\\$`".contains(escaped) { value.append("\\") }
                            value.append(escaped)
                            advance()
                        } else if inner == "$" {
                            value += expansion()
                        } else {
                            value.append(inner)
                            advance()
                        }
                    }
                    guard current == "\"" else {
                        problem("unterminated double quote", at: start)
                        return nil
                    }
                    advance()
                case "\\":
                    advance()
                    if let escaped = current {
                        if escaped != "\n" { value.append(escaped) }
                        advance()
                    }
                case "$":
                    value += expansion()
                default:
                    value.append(character)
                    advance()
                }
            }
            return value
        }

        /// `$NAME` or `${NAME}` at the cursor, expanded (unset: empty, as in a shell); a `$`
        /// not followed by a name is itself.
        mutating func expansion() -> String {
            advance()
            let braced = current == "{"
            if braced { advance() }
            let name = name()
            if braced {
                guard current == "}", !name.isEmpty else { return "${" + name }
                advance()
            }
            guard !name.isEmpty else { return "$" }
            return assignments.last(where: { $0.name == name })?.value ?? environment[name] ?? ""
        }
    }
}
